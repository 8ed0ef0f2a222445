"""The pyfunc path: a model of any other flavor (scikit-learn, XGBoost, a custom ``python_function``) served
through ``mlflow.pyfunc``.

Rows become what the signature declares before ``predict``: a DataFrame with the signature's column names
and types, a tensor of the declared per-row shape and dtype, or the rows themselves without a signature.
They are batched like torch's (the batcher concatenates rows and offloads the call to a worker thread when a
full batch takes over a millisecond). A classifier's ``predict`` must return class probabilities
``[rows, classes]`` in ``gpuflow.labels`` order (a scikit-learn classifier logged with
``pyfunc_predict_fn="predict_proba"``, labels ``model.classes_``); a regressor's one value per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workloads.server.config import EXIT_USAGE, ServerConfig
from workloads.server.errors import ModelLoadError
from workloads.server.inputs import InputSpec
from workloads.server.model_loading import LoadedModel
from workloads.server.served import Predictor, task_labels

_PROBA = "log a scikit-learn classifier with pyfunc_predict_fn='predict_proba'"


def model_input(spec: InputSpec | None) -> Callable[[np.ndarray], Any]:
    """Rows ``[N, n_features]`` -> what ``predict`` takes according to the signature."""
    if spec is None:
        return lambda x: x
    shape = spec.shape
    if shape is not None:
        dtype = np.dtype(spec.dtype)
        return lambda x: x.reshape(len(x), *shape).astype(dtype, copy=False)
    if not spec.columns:
        return lambda x: x
    import pandas as pd

    names = [c.name for c in spec.columns]
    dtypes = [c.dtype for c in spec.columns]
    if len(set(dtypes)) == 1 and dtypes[0] != "object":
        same = dtypes[0]
        return lambda x: pd.DataFrame(x.astype(same, copy=False), columns=names, copy=False)

    def frame(x: np.ndarray) -> Any:
        return pd.DataFrame({name: x[:, j].astype(dtypes[j]) for j, name in enumerate(names)})

    return frame


def _as_array(out: Any) -> np.ndarray:
    if hasattr(out, "to_numpy"):
        out = out.to_numpy()
    array = np.asarray(out)
    if array.dtype.kind not in "iufb":
        raise TypeError(f"predict returns {array.dtype} values, not numbers")
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def pyfunc_function(model: Any, spec: InputSpec | None) -> Callable[[np.ndarray], np.ndarray]:
    convert = model_input(spec)

    def infer(x: np.ndarray) -> np.ndarray:
        return _as_array(model.predict(convert(x)))

    return infer


def _checking_rows(loaded: LoadedModel, spec: InputSpec | None) -> np.ndarray:
    """Rows to check the model on: its input example, else rows made from the signature."""
    if loaded.example is not None:
        return loaded.example
    width = loaded.n_features
    if width is None:
        raise ModelLoadError(
            f"{loaded.source.uri}: cannot tell its input (no signature, no input example); expected a model "
            "logged with a signature or an input_example",
            EXIT_USAGE,
        )
    if spec is None or not spec.typed:
        dtype = spec.dtype if spec else "float32"
        return np.random.default_rng(0).normal(size=(8, width)).astype(dtype)
    unknown = [c.name for c in spec.columns or () if c.kind == "string" and not c.categories]
    if unknown:
        raise ModelLoadError(
            f"{loaded.source.uri}: cannot check the model before serving it: string column(s) {unknown} and no "
            "input example; expected a model logged with an input_example (or gpuflow.categories metadata)",
            EXIT_USAGE,
        )
    zero = {"number": 0.0, "integer": 0, "boolean": False}
    row = [c.categories[0] if c.categories else zero[c.kind] for c in spec.columns or ()]
    return np.array([row], dtype=object)


def build_pyfunc(loaded: LoadedModel, config: ServerConfig) -> Predictor:
    """Check a pyfunc model on real rows against its task, and serve it through ``predict``."""
    started = time.perf_counter()
    source = loaded.source
    if config.backend != "auto":
        raise ModelLoadError(
            f"{source.uri}: --backend {config.backend} needs a pytorch model; this one is served through "
            "mlflow.pyfunc (use --backend auto)",
            EXIT_USAGE,
        )
    spec = loaded.inputs
    infer = pyfunc_function(loaded.module, spec)
    rows = _checking_rows(loaded, spec)
    output = "values" if source.task == "regression" else "probabilities"
    try:
        raw = loaded.module.predict(model_input(spec)(rows))
    except Exception as exc:
        message = f"{source.uri}: predict fails on rows of its own input example: {exc}"
        raise ModelLoadError(message, EXIT_USAGE) from exc
    try:
        out = _as_array(raw)
    except TypeError as exc:
        expected = "one number per row" if output == "values" else f"class probabilities [rows, classes] ({_PROBA})"
        raise ModelLoadError(f"{source.uri}: {exc}; expected {expected}", EXIT_USAGE) from exc
    if len(out) != len(rows):
        raise ModelLoadError(f"{source.uri}: predict returned {len(out)} answers for {len(rows)} rows", EXIT_USAGE)
    labels = task_labels(source, source.task, out, output)
    return Predictor(
        name=source.name,
        version=source.version,
        uri=source.uri,
        labels=labels,
        n_features=int(rows.shape[1]),
        feature_names=loaded.feature_names,
        backend="pyfunc",
        infer=infer,
        load_seconds=loaded.seconds + time.perf_counter() - started,
        task=source.task,
        output=output,
        inputs=spec or InputSpec(int(rows.shape[1]), str(rows.dtype) if rows.dtype.kind == "f" else "float32"),
        refusals_are_client_errors=bool(spec and spec.unknown_categories),
    )
