"""Turn a loaded model into the function the batcher calls: rows in, the model's outputs out.

A PyTorch module runs as the compiled numpy chain (``compiled.py``) when it is one and that reproduces torch's
outputs on the model's input example and random rows around it; otherwise torch runs it under
``torch.inference_mode``. A tensor input (say ``[1, 8, 8]``) is reshaped from the flat rows for torch; the
numpy chain takes the flat rows (it only compiles when the module starts by flattening them). Any other
flavor goes through ``mlflow.pyfunc`` (pyfunc_path.py). All are limited to ``--threads`` intra-op threads: on
small batches BLAS thread hand-offs cost more than they save (a 64-row batch took 135 us with OpenBLAS's
default threads, 17 us on one).

Outputs per task (checked by ``served.task_labels`` on real rows, before the server is ready): a classifier
answers logits (torch) or class probabilities (pyfunc) ``[rows, classes]`` in ``gpuflow.labels`` order; a
regressor one value per row, ``[rows]`` or ``[rows, 1]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workloads.server.compiled import Unsupported, compile_module, matches
from workloads.server.config import EXIT_USAGE, ServerConfig
from workloads.server.errors import ModelLoadError
from workloads.server.inputs import InputSpec
from workloads.server.model_loading import LoadedModel
from workloads.server.pyfunc_path import build_pyfunc
from workloads.server.served import Predictor, task_labels

__all__ = ["OFFLOAD_ABOVE_S", "Predictor", "build", "limit_threads", "warm_up"]

log = logging.getLogger(__name__)
OFFLOAD_ABOVE_S = 0.001  # a full batch slower than this runs in a worker thread (with --offload auto)


def limit_threads(threads: int) -> None:
    """Cap BLAS (numpy) and torch intra-op threads."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    torch.set_num_threads(threads)


def _torch_function(
    module: Any, shape: tuple[int, ...] | None, device: str = "cpu"
) -> Callable[[np.ndarray], np.ndarray]:
    """Rows in, outputs out as float32 numpy; on ``device`` the inputs go over and the outputs come back."""
    import torch

    if hasattr(module, "eval"):
        try:
            module.eval()
        except Exception:  # torch.export GraphModules refuse .eval(): they are already in inference form
            log.debug("module refuses eval(); using it as loaded")

    def infer(x: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(x)
        if shape is not None:
            rows = rows.reshape(len(rows), *shape)
        with torch.inference_mode():
            out = module(torch.from_numpy(rows).to(device))
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
    """Pick the backend and check the model against its task and labels; :class:`ModelLoadError` when unservable."""
    limit_threads(config.threads)
    if loaded.flavor == "pyfunc":
        if config.device == "cuda":
            log.info("%s: --device cuda applies to PyTorch models; pyfunc models place themselves", loaded.source.uri)
        return build_pyfunc(loaded, config)
    return _build_torch(loaded, config)


def _device(loaded: LoadedModel, config: ServerConfig) -> str:
    """``cpu``, or ``cuda:0`` when asked for and present; asking for cuda with the numpy backend is a usage error."""
    if config.device != "cuda":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was requested but no CUDA device is available", EXIT_USAGE)
    if config.backend == "numpy":
        raise ModelLoadError(
            f"{loaded.source.uri}: --backend numpy runs on the CPU; expected --backend torch or auto with "
            "--device cuda",
            EXIT_USAGE,
        )
    return "cuda:0"


def _build_torch(loaded: LoadedModel, config: ServerConfig) -> Predictor:
    started = time.perf_counter()
    device = _device(loaded, config)
    module = loaded.module if device == "cpu" else loaded.module.to(device)
    shape = loaded.inputs.shape if loaded.inputs else None
    reference = _torch_function(module, shape, device)
    compiled = None
    note = ""
    if config.backend != "torch" and device == "cpu":
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
        wanted = f"tensors [rows, {', '.join(map(str, shape))}]" if shape else f"float32 rows of {n_features} features"
        raise ModelLoadError(f"{loaded.source.uri}: the model fails on {wanted}: {exc}", EXIT_USAGE) from exc
    labels = task_labels(loaded.source, loaded.source.task, expected, "logits")
    if compiled is not None:
        try:
            mismatch = matches(compiled, expected, rows)
        except Exception as exc:  # e.g. a layer that needs the unflattened tensor: shapes do not line up
            mismatch = f"fails on flat rows ({exc})"
        if mismatch is not None:
            note = f"numpy version does not reproduce torch ({mismatch})"
            compiled = None
    if compiled is None and config.backend == "numpy":
        raise ModelLoadError(f"{loaded.source.uri}: --backend numpy impossible: {note}", EXIT_USAGE)
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
        task=source.task,
        output="values" if source.task == "regression" else "logits",
        inputs=loaded.inputs or InputSpec(n_features),
        device=device if compiled is None else "cpu",
    )


def warm_up(predictor: Predictor, config: ServerConfig, example: np.ndarray | None) -> tuple[float, float]:
    """Run inference at batch sizes 1 and ``max_batch_size``; returns (seconds, best full-batch seconds)."""
    started = time.perf_counter()
    dtype = predictor.input_spec.dtype
    base = example if example is not None else np.zeros((1, predictor.n_features), dtype=dtype)
    one = np.ascontiguousarray(base[:1])
    full = np.ascontiguousarray(base[np.arange(config.max_batch_size) % len(base)])
    best_full = float("inf")
    for _ in range(config.warmup_batches):
        predictor.infer(one)
        tick = time.perf_counter()
        predictor.infer(full)
        best_full = min(best_full, time.perf_counter() - tick)
    return time.perf_counter() - started, best_full
