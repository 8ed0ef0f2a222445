"""The server's command line: flags, their environment defaults, and the exit codes it documents.

The same command starts the server locally and in a pod, so every flag can also come from an environment
variable (``GPUFLOW_SERVER_<FLAG>``, e.g. ``GPUFLOW_SERVER_MAX_BATCH_SIZE``); the tracking URI comes from
``--tracking-uri`` or ``MLFLOW_TRACKING_URI``. Variables are read as if given before the command line
arguments, so they are checked the same way and a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

EXIT_OK = 0  # stopped by SIGTERM/SIGINT after finishing in-flight requests
EXIT_ERROR = 1  # an unexpected error (a bug): the traceback is logged
EXIT_USAGE = 2  # bad arguments, or the model does not exist or cannot be served: retrying will not help
EXIT_UNAVAILABLE = 3  # MLflow or the artifact store could not be reached: retrying later may help
EXIT_LISTEN = 4  # cannot listen on --host/--port (address in use, permission)

ENV_PREFIX = "GPUFLOW_SERVER_"
MODEL_URI_FORMS = "models:/<name>/<version>, models:/<name>@<alias>, models:/m-<model id> or runs:/<run id>/<path>"


def model_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot name a model, by its shape alone (no MLflow needed), or None when it can."""
    if uri.startswith("runs:/"):
        return None
    if not uri.startswith("models:/"):
        return f"unsupported model URI {uri!r}: expected {MODEL_URI_FORMS}"
    rest = uri.removeprefix("models:/")
    if "@" not in rest and "/" not in rest and not rest.startswith("m-"):
        return f"model URI {uri!r} names no version or alias: expected {MODEL_URI_FORMS}"
    return None


def model_uri_argument(uri: str) -> str:
    """``--model-uri``'s type: a URI of the wrong shape is a usage error before the server listens or imports MLflow."""
    if (problem := model_uri_problem(uri)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return uri


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server is told; built once from argv and the environment."""

    model_uri: str
    tracking_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 64
    max_wait_us: int = 500
    max_body_bytes: int = 1 << 20
    max_rows: int = 1024
    backend: str = "auto"
    device: str = "cpu"
    offload: str = "auto"
    threads: int = 1
    loop: str = "auto"
    keep_alive_s: float = 75.0
    request_timeout_s: float = 30.0
    shutdown_timeout_s: float = 30.0
    warmup_batches: int = 50
    log_level: str = "INFO"

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_us / 1e6


def _bounded(kind: Callable[[str], Any], low: float, high: float | None = None) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected {span}")
        return value

    convert.__name__ = kind.__name__
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workloads.server",
        description="Serve one MLflow model (PyTorch, or any flavor via pyfunc) over HTTP with dynamic batching.",
        epilog=(
            f"Every flag also reads {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT). Exit codes: 0 stopped by a signal, "
            "1 unexpected error, 2 bad arguments or model not found/unservable, 3 MLflow unreachable, "
            "4 cannot listen."
        ),
    )
    defaults = ServerConfig(model_uri="")

    def add(flag: str, help_text: str, default: Any = None, **kwargs: Any) -> None:
        variable = _variable(flag)
        parser.add_argument(flag, default=default, help=f"{help_text} [env {variable}; default %(default)s]", **kwargs)

    add("--model-uri", MODEL_URI_FORMS, required=True, type=model_uri_argument)
    add("--tracking-uri", "MLflow tracking (and registry) URI; else MLFLOW_TRACKING_URI")
    add("--host", "address to listen on (0.0.0.0 in a pod)", defaults.host)
    add("--port", "TCP port; 0 picks a free one (logged)", defaults.port, type=_bounded(int, 0, 65535))
    add("--max-batch-size", "most rows per inference call", defaults.max_batch_size, type=_bounded(int, 1))
    add(
        "--max-wait-us",
        "longest a queued request waits for others to join its batch (microseconds)",
        defaults.max_wait_us,
        type=_bounded(int, 0, 10_000_000),
    )
    add("--max-body-bytes", "largest request body accepted", defaults.max_body_bytes, type=_bounded(int, 64))
    add("--max-rows", "most rows in one request", defaults.max_rows, type=_bounded(int, 1))
    add(
        "--backend",
        "PyTorch models: numpy, the compiled MLP (fails if the model is not a supported chain); torch; auto: "
        "numpy when possible. Other flavors run through mlflow.pyfunc (auto only)",
        defaults.backend,
        choices=("auto", "numpy", "torch"),
    )
    add(
        "--device",
        "where PyTorch models run: cuda is the first visible GPU and implies the torch backend (the compiled numpy "
        "path and pyfunc models run on the CPU)",
        defaults.device,
        choices=("cpu", "cuda"),
    )
    add(
        "--offload",
        "run inference in a worker thread (yes), on the event loop (no), or auto: a thread when a full batch "
        "takes over 1 ms",
        defaults.offload,
        choices=("auto", "yes", "no"),
    )
    add("--threads", "intra-op threads for BLAS and torch", defaults.threads, type=_bounded(int, 1, 256))
    add("--loop", "event loop: uvloop when installed (auto) or asyncio", defaults.loop, choices=("auto", "asyncio"))
    add("--keep-alive-s", "close idle keep-alive connections after", defaults.keep_alive_s, type=_bounded(float, 0.1))
    add(
        "--request-timeout-s",
        "answer 408 and close when a request is incomplete after",
        defaults.request_timeout_s,
        type=_bounded(float, 0.1),
    )
    add(
        "--shutdown-timeout-s",
        "on SIGTERM, longest wait for in-flight requests",
        defaults.shutdown_timeout_s,
        type=_bounded(float, 0.0),
    )
    add("--warmup-batches", "inference calls before ready", defaults.warmup_batches, type=_bounded(int, 1))
    add("--log-level", "logging level", defaults.log_level, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def _variable(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_args(argv: Sequence[str] | None) -> ServerConfig:
    """Parse the environment then ``argv`` (``sys.argv[1:]`` when None); exits with code 2 on bad arguments."""
    parser = build_parser()
    from_env: list[str] = []
    for action in parser._actions:
        flag = next((option for option in action.option_strings if option.startswith("--")), None)
        if flag and flag != "--help" and _variable(flag) in os.environ:
            from_env += [flag, os.environ[_variable(flag)]]
    namespace = parser.parse_args([*from_env, *(sys.argv[1:] if argv is None else argv)])
    if namespace.tracking_uri is None:
        namespace.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
    return ServerConfig(**vars(namespace))
