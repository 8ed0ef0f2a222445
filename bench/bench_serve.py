"""Benchmark: gpuflow's inference server against ``mlflow models serve`` on the same model version.

Each server runs alone (one after the other) and is driven by wrk with one thread, one JSON row per
request (a real row of the model's data), at concurrency 1, 8 and 64, after a short warm-up at each level.
Before it is measured, every server answers a sample of rows one by one and its answers are compared with the
model loaded back through MLflow. Printed per server and concurrency: throughput, p50 and p99 latency, errors,
the answers checked, and ratios against ``mlflow models serve``.

Models (``--model``, serve_models.py): ``mlp`` the digits MLP (the compiled numpy path), ``cnn`` a small CNN on
``[1, 8, 8]`` digits images (the torch path), ``sklearn`` a HistGradientBoostingClassifier on breast cancer
(the pyfunc path).

Servers:

- ``gpuflow``: ``python -m workloads.server`` (uvloop when installed); ``gpuflow-torch``, the same with
  ``--backend torch`` (the compiled path's share of the speed: only differs for the MLP); and
  ``gpuflow-asyncio``, the same with ``--loop asyncio`` (the fallback when uvloop is missing);
- ``mlflow``: ``mlflow models serve -m <uri> --env-manager local`` (uvicorn, one worker: MLflow's default);
- ``reference`` (MLP only): a bare asyncio.Protocol + orjson + numpy server written below (no batching, no
  checks, no metrics): a floor for what a pure-Python HTTP server costs, not a product;
- ``mlserver`` (only with ``--mlserver PATH``): Seldon MLServer + mlserver-mlflow, V2 protocol. It cannot share
  gpuflow's virtualenv (it pins older fastapi, starlette and protobuf); docs/serving.md shows a side venv.

Without ``--model-uri`` the model is trained and registered in a temporary MLflow store (as the tests do).
wrk is required: ``apt-get install -y wrk`` (or ``brew install wrk``).

Usage: ``python bench/bench_serve.py [--model mlp|cnn|sklearn] [--duration 5] [--connections 1,8,64]
[--servers gpuflow,gpuflow-torch,mlflow,reference] [--model-uri models:/name/1 --tracking-uri URI]
[--mlserver /path/to/venv/bin/mlserver] [--json out.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.serve_models import Model, answer_label, make_model

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# -- the bare reference server ----------------------------------------------------------------------------


def run_reference_server(port: int, weights_path: str) -> None:
    """A minimal keep-alive HTTP server: parse, orjson, numpy MLP, precomputed answers. Plain asyncio."""
    import numpy as np
    import orjson

    weights = np.load(weights_path)
    layers = [(weights[f"w{i}"], weights[f"b{i}"]) for i in range(len(weights.files) // 2) if f"w{i}" in weights]
    mean, std = (weights["mean"], weights["std"]) if "mean" in weights.files else (None, None)
    answers = [b'{"predictions":[%d]}' % i for i in range(layers[-1][0].shape[1])]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "

    def predict(rows: Any) -> bytes:
        x = np.asarray(rows, dtype=np.float32)
        if mean is not None:
            x = (x - mean) / std
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < len(layers) - 1:
                np.maximum(x, 0, out=x)
        body = answers[int(x[0].argmax())]
        return head + str(len(body)).encode() + b"\r\n\r\n" + body

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = 0
                for line in self.buffer[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                body = self.buffer[end + 4 : end + 4 + length]
                self.buffer = self.buffer[end + 4 + length :]
                if length:
                    self.transport.write(predict(orjson.loads(body)["rows"]))
                else:
                    self.transport.write(head + b"2\r\n\r\n{}")

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# -- model and servers ------------------------------------------------------------------------------------


def existing_model(tracking_uri: str, uri: str) -> Model:
    """A registered model given by URI: rows of zeros, no answers to check."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.models import Model as MlflowModel

    sys.path.insert(0, str(ROOT))
    from tasks.tracking.model_registry import model_location

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    path = mlflow.artifacts.download_artifacts(artifact_uri=model_location(client, uri), tracking_uri=tracking_uri)
    width = int(MlflowModel.load(path).signature.inputs.inputs[0].shape[1])
    row = [0.0] * width
    return Model("given", tracking_uri, uri, path, {"rows": [row]}, {"inputs": [row]})


def save_reference_weights(model: Model, out: Path) -> None:
    """The module's linear layers (and normalisation buffers) as plain arrays for the reference server."""
    import mlflow.pytorch
    import numpy as np

    module = mlflow.pytorch.load_model(model.path)
    arrays: dict[str, Any] = {}
    weights = [p for name, p in module.named_parameters() if name.endswith("weight") and p.ndim == 2]
    biases = [p for name, p in module.named_parameters() if name.endswith("bias")]
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        arrays[f"w{i}"] = w.detach().numpy().T.copy()
        arrays[f"b{i}"] = b.detach().numpy()
    buffers = dict(module.named_buffers())
    if "mean" in buffers and "std" in buffers:
        arrays["mean"], arrays["std"] = buffers["mean"].numpy(), buffers["std"].numpy()
    np.savez(out, **arrays)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Contender:
    name: str
    command: list[str]
    ready_url: str
    url: str
    body: dict[str, Any]
    env: dict[str, str]
    cwd: Path = ROOT


def contenders(names: list[str], model: Model, workdir: Path, mlserver: str | None) -> list[Contender]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": model.tracking_uri, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    rows = model.gpuflow_body
    out = []
    for name in names:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if name in ("gpuflow", "gpuflow-asyncio", "gpuflow-torch"):
            command = [sys.executable, "-m", "workloads.server", "--model-uri", model.uri, "--port", str(port)]
            if name == "gpuflow-asyncio":
                command += ["--loop", "asyncio"]
            if name == "gpuflow-torch":
                if model.kind == "sklearn":
                    print("gpuflow-torch: skipped (a scikit-learn model has no torch backend)")
                    continue
                command += ["--backend", "torch"]
            out.append(Contender(name, command, f"{base}/readyz", f"{base}/v1/predict", rows, env))
        elif name == "mlflow":
            command = [str(BIN / "mlflow"), "models", "serve", "-m", model.uri, "--env-manager", "local"]
            command += ["-h", "127.0.0.1", "-p", str(port)]
            out.append(Contender(name, command, f"{base}/ping", f"{base}/invocations", model.mlflow_body, env))
        elif name in ("reference", "mlserver") and model.kind not in ("mlp", "given"):
            print(f"{name}: skipped (written for the digits MLP only)")
        elif name == "reference":
            weights = workdir / "reference.npz"
            save_reference_weights(model, weights)
            command = [sys.executable, __file__, "--reference-server", str(port), str(weights)]
            out.append(Contender(name, command, f"{base}/", f"{base}/v1/predict", rows, env))
        elif name == "mlserver":
            if not mlserver:
                print("mlserver: skipped (give --mlserver /path/to/bin/mlserver; see docs/serving.md)")
                continue
            folder = workdir / "mlserver"
            folder.mkdir(exist_ok=True)
            settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1"}
            (folder / "settings.json").write_text(json.dumps(settings))
            model_settings = {
                "name": "digits",
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"uri": model.path},
            }
            (folder / "model-settings.json").write_text(json.dumps(model_settings))
            v2 = {"inputs": [{"name": "input-0", "shape": [1, len(model.row)], "datatype": "FP32", "data": model.row}]}
            out.append(
                Contender(
                    name,
                    [mlserver, "start", "."],
                    f"{base}/v2/models/digits/ready",
                    f"{base}/v2/models/digits/infer",
                    v2,
                    env,
                    folder,
                )
            )
        else:
            raise SystemExit(
                f"unknown server {name!r}: expected gpuflow, gpuflow-torch, gpuflow-asyncio, mlflow, reference or "
                "mlserver"
            )
    return out


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it after 10 s (MLServer ignores SIGTERM)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# -- wrk ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    server: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    checked: str = "-"  # sample answers equal to the model's own, e.g. "20/20"


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not found:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def parse_wrk(output: str, server: str, connections: int) -> Result:
    latencies = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, flags=re.M))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rate or "50" not in latencies or "99" not in latencies:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Result(server, connections, float(rate.group(1)), _ms(latencies["50"]), _ms(latencies["99"]), errors)


def check_answers(contender: Contender, model: Model) -> str:
    """Send the sample rows one by one; how many answers name the label the model loaded with MLflow gives."""
    if contender.name == "mlserver" or not model.samples:
        return "-"
    matched = 0
    for gpuflow_body, mlflow_body, expected in model.samples:
        body = mlflow_body if contender.name == "mlflow" else gpuflow_body
        request = urllib.request.Request(
            contender.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            got = answer_label(contender.name, response.read(), model.labels)
        matched += got == expected
    return f"{matched}/{len(model.samples)}"


def run_wrk(contender: Contender, connections: int, seconds: float, script: Path) -> str:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), contender.url]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout


def lua_script(contender: Contender, workdir: Path) -> Path:
    path = workdir / f"{contender.name}.lua"
    body = json.dumps(contender.body, separators=(",", ":"))
    path.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = {json.dumps(body)}\n'
    )
    return path


def measure(
    contender: Contender, model: Model, levels: list[int], seconds: float, warmup: float, workdir: Path
) -> list[Result]:
    log = open(workdir / f"{contender.name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        contender.command, cwd=contender.cwd, env=contender.env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        started = wait_ready(contender.ready_url, proc)
        checked = check_answers(contender, model)
        print(f"{contender.name}: ready in {started:.1f} s; sample answers equal to the model's own: {checked}")
        script = lua_script(contender, workdir)
        results = []
        for connections in levels:
            run_wrk(contender, connections, warmup, script)
            result = parse_wrk(run_wrk(contender, connections, seconds, script), contender.name, connections)
            result = Result(**{**asdict(result), "checked": checked})
            print(
                f"  c={connections:<3} {result.requests_per_s:>9.0f} req/s  p50 {result.p50_ms:.3f} ms  "
                f"p99 {result.p99_ms:.3f} ms  errors {result.errors}",
                flush=True,
            )
            results.append(result)
        return results
    finally:
        stop(proc)
        log.close()


def report(results: list[Result], baseline: str = "mlflow") -> str:
    base = {r.connections: r for r in results if r.server == baseline}
    lines = [
        f"{'server':<16} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'answers':>7} "
        f"{'req/s vs mlflow':>16} {'p50 vs mlflow':>14}"
    ]
    for r in results:
        ref = base.get(r.connections)
        rate = f"{r.requests_per_s / ref.requests_per_s:.1f}x" if ref else "-"
        p50 = f"{r.p50_ms / ref.p50_ms:.2f}x" if ref and ref.p50_ms else "-"
        lines.append(
            f"{r.server:<16} {r.connections:>4} {r.requests_per_s:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} "
            f"{r.errors:>6} {r.checked:>7} {rate:>16} {p50:>14}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--reference-server"]:
        run_reference_server(int(argv[1]), argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (whole seconds: wrk)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each measurement")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn", "sklearn"), help="what to serve")
    parser.add_argument("--servers", default="gpuflow,gpuflow-torch,gpuflow-asyncio,mlflow,reference,mlserver")
    parser.add_argument("--model-uri", help="benchmark this model (needs --tracking-uri) instead of a fresh digits MLP")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--mlserver", default=os.environ.get("GPUFLOW_BENCH_MLSERVER"), help="path to mlserver")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: apt-get install -y wrk (Debian/Ubuntu) or brew install wrk (macOS)", file=sys.stderr
        )
        return 2
    levels = [int(c) for c in args.connections.split(",")]
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        if args.model_uri:
            if not args.tracking_uri:
                parser.error("--model-uri needs --tracking-uri (or MLFLOW_TRACKING_URI)")
            model = existing_model(args.tracking_uri, args.model_uri)
        else:
            model = make_model(args.model, workdir)
        print(
            f"model {model.kind} {model.uri} ({len(model.row)} values per row); {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f} (wrk and other work share them); wrk -t1, {args.duration:g} s"
        )
        results: list[Result] = []
        for contender in contenders(names, model, workdir, args.mlserver):
            try:
                results += measure(contender, model, levels, args.duration, args.warmup, workdir)
            except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
                tail = (workdir / f"{contender.name}.log").read_text(errors="replace")[-2000:]
                print(f"{contender.name}: failed: {exc}\n{tail}", file=sys.stderr)
    print()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
