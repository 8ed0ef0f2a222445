"""Turn a loaded PyTorch module into the function the batcher calls: float32 rows in, logits out.

The compiled numpy chain (``compiled.py``) is used when the module is one and it reproduces torch's
outputs on the model's input example and random rows around it; otherwise torch runs the module under
``torch.inference_mode``. Both are limited to ``--threads`` intra-op threads: on small batches BLAS thread
hand-offs cost more than they save (a 64-row batch took 135 us with OpenBLAS's default threads, 17 us on one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from workloads.server.compiled import Unsupported, compile_module, matches
from workloads.server.config import EXIT_USAGE, ServerConfig
from workloads.server.errors import ModelLoadError
from workloads.server.model_loading import LoadedModel

log = logging.getLogger(__name__)
OFFLOAD_ABOVE_S = 0.001  # a full batch slower than this runs in a worker thread (with --offload auto)


@dataclass(frozen=True)
class Predictor:
    """What the server serves: the inference function and the facts requests are checked against."""

    name: str
    version: str
    uri: str
    labels: list[Any]
    n_features: int
    feature_names: list[str] | None
    backend: str
    infer: Callable[[np.ndarray], np.ndarray]
    load_seconds: float
    backend_note: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def limit_threads(threads: int) -> None:
    """Cap BLAS (numpy) and torch intra-op threads."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    torch.set_num_threads(threads)


def _torch_function(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    if hasattr(module, "eval"):
        try:
            module.eval()
        except Exception:  # torch.export GraphModules refuse .eval(): they are already in inference form
            log.debug("module refuses eval(); using it as loaded")

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(x)))
        if isinstance(out, tuple | list):
            out = out[0]
        return np.asarray(out.detach().to("cpu", torch.float32).numpy())

    return infer


def _first_linear_width(module: Any) -> int | None:
    """In-features of the first 2-D weight, for models whose signature and example say nothing."""
    for name, parameter in module.named_parameters():
        if name.endswith("weight") and parameter.ndim == 2:
            return int(parameter.shape[1])
    return None


def _verification_rows(example: np.ndarray | None, n_features: int) -> np.ndarray:
    """Realistic rows (the example and noise around it) plus random ones, fixed by a seed."""
    rng = np.random.default_rng(0)
    scale = max(1.0, float(np.abs(example).mean())) if example is not None else 1.0
    noise = rng.normal(0.0, scale, size=(128, n_features))
    if example is not None:
        noise = noise + example[rng.integers(0, len(example), size=128)]
        noise = np.concatenate([example, noise])
    return np.ascontiguousarray(noise, dtype=np.float32)


def build(loaded: LoadedModel, config: ServerConfig) -> Predictor:
    """Pick the backend and check the model against its labels; :class:`ModelLoadError` when unservable."""
    started = time.perf_counter()
    limit_threads(config.threads)
    module = loaded.module
    reference = _torch_function(module)
    compiled = None
    note = ""
    if config.backend != "torch":
        try:
            compiled = compile_module(module)
        except Unsupported as exc:
            note = f"not compiled to numpy: {exc}"
    n_features = loaded.n_features or (compiled.n_features if compiled else None) or _first_linear_width(module)
    if n_features is None:
        raise ModelLoadError(
            f"{loaded.source.uri}: cannot tell the number of input features (no signature, input example or "
            "linear layer); expected a model logged with a signature",
            EXIT_USAGE,
        )
    rows = _verification_rows(loaded.example, n_features)
    try:
        expected = reference(rows)
    except Exception as exc:
        raise ModelLoadError(
            f"{loaded.source.uri}: the model fails on float32 rows of {n_features} features: {exc}", EXIT_USAGE
        ) from exc
    if expected.ndim != 2:
        raise ModelLoadError(
            f"{loaded.source.uri}: output shape {expected.shape}; expected logits [rows, classes]", EXIT_USAGE
        )
    if compiled is not None:
        mismatch = matches(compiled, expected, rows)
        if mismatch is not None:
            note = f"numpy version does not reproduce torch ({mismatch})"
            compiled = None
    if compiled is None and config.backend == "numpy":
        raise ModelLoadError(f"{loaded.source.uri}: --backend numpy impossible: {note}", EXIT_USAGE)
    labels = loaded.source.labels
    n_classes = int(expected.shape[1])
    if labels is None:
        log.warning("%s has no gpuflow.labels tag: answering class indices 0..%d", loaded.source.uri, n_classes - 1)
        labels = list(range(n_classes))
    if len(labels) != n_classes:
        raise ModelLoadError(
            f"{loaded.source.uri}: {len(labels)} labels in gpuflow.labels but the model outputs {n_classes} logits",
            EXIT_USAGE,
        )
    if note:
        log.info("%s: using torch (%s)", loaded.source.uri, note)
    source = loaded.source
    return Predictor(
        name=source.name,
        version=source.version,
        uri=source.uri,
        labels=labels,
        n_features=n_features,
        feature_names=loaded.feature_names,
        backend="numpy" if compiled is not None else "torch",
        infer=compiled if compiled is not None else reference,
        load_seconds=loaded.seconds + time.perf_counter() - started,
        backend_note=note,
    )


def warm_up(predictor: Predictor, config: ServerConfig, example: np.ndarray | None) -> tuple[float, float]:
    """Run inference at batch sizes 1 and ``max_batch_size``; returns (seconds, best full-batch seconds)."""
    started = time.perf_counter()
    base = example if example is not None else np.zeros((1, predictor.n_features), dtype=np.float32)
    one = np.ascontiguousarray(base[:1])
    full = np.ascontiguousarray(base[np.arange(config.max_batch_size) % len(base)])
    best_full = float("inf")
    for _ in range(config.warmup_batches):
        predictor.infer(one)
        tick = time.perf_counter()
        predictor.infer(full)
        best_full = min(best_full, time.perf_counter() - tick)
    return time.perf_counter() - started, best_full
