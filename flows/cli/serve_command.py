"""``gpuflow serve``: the inference server in the foreground, on the embedded tracking store unless told otherwise.

Importing this module costs only argparse and the server's flag checks, and so does running it up to the server's own
imports: no Prefect.
"""

from __future__ import annotations

import argparse

from workloads.server.config import model_uri_argument


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``gpuflow`` command's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="serve one model version over HTTP in the foreground",
        description="Serve a registered model (models:/NAME/VERSION or models:/NAME@ALIAS) with the same server "
        "the canary and the cluster use. Extra options go to the server: see docs/serving.md.",
    )
    serve.add_argument(
        "model_uri", metavar="MODEL_URI", type=model_uri_argument, help="e.g. models:/gpuflow-digits@champion"
    )
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("server_args", nargs=argparse.REMAINDER, help="further server options, e.g. --max-wait-us 200")
    return serve


def serve_command(args: argparse.Namespace) -> int:
    """Run the inference server in this process, on the embedded tracking store unless told otherwise."""
    from tasks.core import settings
    from workloads.server import main as server_main

    argv = ["--model-uri", args.model_uri, "--port", str(args.port), "--host", args.host]
    if "--tracking-uri" not in args.server_args:
        argv += ["--tracking-uri", settings.tracking_uri()]
    return server_main(argv + list(args.server_args))
