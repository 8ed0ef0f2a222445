"""The inference server workload: one MLflow model version over HTTP, with dynamic batching and metrics.

Start it with ``python -m workloads.server --model-uri models:/<name>@champion --port 8080`` (see
docs/serving.md); ``main(argv)`` is the same entry point for ``gpuflow serve``. Like every workload it
imports neither Prefect nor tasks/.
"""

from workloads.server.cli import main

__all__ = ["main"]
