"""Load a logged or registered model for scoring: the fast torch path, or any MLflow flavor through pyfunc.

A model with the ``pytorch`` flavor is loaded as its ``nn.Module`` and called on float32 tensors (what the
trainer logs; the figures stay those of before). Any other flavor is loaded with ``mlflow.pyfunc`` and its
``predict`` is called: class probabilities ``[N, C]`` in ``gpuflow.labels`` order for a classifier (log a
scikit-learn classifier with ``pyfunc_predict_fn="predict_proba"``), values ``[N]`` for a regressor.

The model's MLflow signature shapes the input: a tensor input of shape ``(-1, d1, d2, ...)`` gets the flat
``[N, F]`` test features reshaped to ``[N, d1, d2, ...]`` (features are stored in the manifest's order, row-major
per tensor column); a column-based signature gets a table with the manifest's feature names, each column cast to
its type and a category column given as the signature asks (its vocabulary's values for a ``string`` column, its
codes for a number: workloads/model_input.py decides, for every reader that feeds a model); no signature, the flat
matrix.
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from blocks.mlflow_tracking import MLflowTracking
from tasks.core.errors import ConfigurationError, DataValidationError
from tasks.core.mlflow_errors import is_not_found
from tasks.tracking.model_registry import model_location
from tasks.tracking.runs import client_for
from workloads.dataset import DatasetCorrupt
from workloads.model_input import InputMismatch, SignatureColumn, model_frame

if TYPE_CHECKING:  # torch and MLflow are imported where used: loading the flow stays cheap
    import torch

# torch.export's deserializer is process-global ("_CURRENT_DESERIALIZER is already set"): pipelines evaluated in
# threads of one process (ml_pipeline called from several threads) load their models one at a time.
_TORCH_LOAD = threading.Lock()


@dataclass(frozen=True)
class ModelInput:
    """What the model's signature asks for: a per-row tensor shape and dtype, column names, or nothing."""

    shape: tuple[int, ...] | None = None  # per row, e.g. (1, 8, 8); None: no tensor signature
    dtype: np.dtype[Any] | None = None
    columns: tuple[str, ...] | None = None  # a column-based signature's input names
    column_types: tuple[str | None, ...] | None = None  # their MLflow types (double, long, string, ...)
    named: bool = True  # False: the columns are the dataset's features by position

    def signature_columns(self, feature_names: list[str]) -> tuple[SignatureColumn, ...] | None:
        """The column signature's inputs, each named by the dataset feature it reads (None: not a column one)."""
        if self.columns is None:
            return None
        names = list(self.columns)
        if not self.named and len(names) == len(feature_names):
            names = list(feature_names)
        types = self.column_types or (None,) * len(names)
        return tuple(SignatureColumn(name, kind) for name, kind in zip(names, types, strict=True))

    def describe(self) -> str:
        if self.shape is not None:
            return f"inputs of shape {(-1, *self.shape)} ({math.prod(self.shape)} values per row)"
        if self.columns is not None:
            return f"columns {list(self.columns)[:8]}"
        return "a flat feature matrix"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score: ``predict`` takes what :meth:`inputs` built (or a row slice of it)."""

    uri: str
    flavor: str  # "pytorch" (the fast path) or the pyfunc loader's module, e.g. "mlflow.sklearn"
    signature: ModelInput
    module: torch.nn.Module | None = None
    pyfunc: Any = None

    @property
    def is_torch(self) -> bool:
        return self.module is not None

    def inputs(
        self,
        features: np.ndarray,
        feature_names: list[str],
        tensors: dict[str, list[int]],
        vocabularies: dict[str, list[str]] | None = None,
    ) -> Any:
        """The split's features in the form the model takes (see the module docstring); ``vocabularies`` are the
        manifest's category columns (name -> values in code order)."""
        flat = np.ascontiguousarray(features, dtype=np.float32)
        shape = self.signature.shape
        if shape is not None:
            if math.prod(shape) != flat.shape[1]:
                declared = (
                    "; the dataset declares "
                    + ", ".join(f"tensor {name!r} of shape {list(s)}" for name, s in tensors.items())
                    if tensors
                    else ""
                )
                raise ConfigurationError(
                    f"{self.uri}: the model's signature takes {self.signature.describe()}, but the test split has "
                    f"{flat.shape[1]} feature values per row, shape {(-1, flat.shape[1])}{declared}"
                )
            flat = flat.reshape((flat.shape[0], *shape))
        if self.module is not None:
            import torch

            return torch.from_numpy(flat)  # float32: the weights' type, as the trainer logs them
        columns = self.signature.signature_columns(feature_names)
        if columns is not None:
            try:
                return model_frame(flat, feature_names, columns, vocabularies or {})
            except InputMismatch as exc:
                raise ConfigurationError(f"{self.uri}: {exc}") from exc
            except DatasetCorrupt as exc:
                raise DataValidationError(str(exc)) from exc
        dtype = self.signature.dtype
        return flat if dtype is None or flat.dtype == dtype else flat.astype(dtype)

    def predictor(self) -> Callable[[Any], Any]:
        """One call of the model on a batch of :meth:`inputs` (a torch tensor stays a tensor: no copies)."""
        if self.module is not None:
            return self.module
        return self.pyfunc.predict


def read_signature(local: str) -> tuple[dict[str, Any], ModelInput]:
    """The model's flavors and input signature from its MLmodel file."""
    from mlflow.models import Model

    meta = Model.load(local)
    schema = meta.signature.inputs if meta.signature is not None else None
    if schema is None:
        return dict(meta.flavors), ModelInput()
    if schema.is_tensor_spec():
        (spec, *more) = schema.inputs
        if more:
            raise ConfigurationError(f"the model at {local} takes {len(schema.inputs)} tensors; gpuflow passes one")
        shape = tuple(int(d) for d in spec.shape)
        if not shape or shape[0] != -1:
            raise ConfigurationError(
                f"the model's signature has input shape {shape}; gpuflow needs a variable first (batch) dimension, "
                "(-1, ...)"
            )
        return dict(meta.flavors), ModelInput(shape=shape[1:], dtype=np.dtype(spec.type))
    names = tuple(str(n) for n in schema.input_names())
    types = tuple(str(getattr(spec.type, "name", spec.type)) for spec in schema.inputs)
    return dict(meta.flavors), ModelInput(columns=names, column_types=types, named=schema.has_input_names())


def _download(tracking: MLflowTracking, model_uri: str, folder: str) -> str:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        location = model_location(client_for(tracking), model_uri)
        return str(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=folder, tracking_uri=tracking.uri, registry_uri=tracking.uri
            )
        )
    except MlflowException as exc:
        if is_not_found(exc):
            raise ConfigurationError(f"no model at {model_uri} in MLflow at {tracking.uri}: {exc.message}") from exc
        raise


def _torch_module(local: str, model_uri: str) -> torch.nn.Module:
    import mlflow.pytorch
    import torch

    with _TORCH_LOAD:
        model = mlflow.pytorch.load_model(local)
    if not isinstance(model, torch.nn.Module):
        raise ConfigurationError(f"{model_uri} is not a PyTorch module (got {type(model).__name__})")
    return model


def load_model(tracking: MLflowTracking, model_uri: str) -> torch.nn.Module:
    """Download a logged or registered PyTorch model through this tracking store and load it."""
    with tempfile.TemporaryDirectory(prefix="gpuflow-model-") as tmp:
        return _torch_module(_download(tracking, model_uri, tmp), model_uri)


@contextmanager
def loaded_model(tracking: MLflowTracking, model_uri: str) -> Iterator[LoadedModel]:
    """The model at ``model_uri``, by its flavor; its downloaded files stay until the block ends."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="gpuflow-model-") as tmp:
        local = _download(tracking, model_uri, tmp)
        flavors, signature = read_signature(local)
        if "pytorch" in flavors:
            yield LoadedModel(model_uri, "pytorch", signature, module=_torch_module(local, model_uri))
            return
        try:
            model = mlflow.pyfunc.load_model(local)
        except Exception as exc:  # a flavor without pyfunc, or its library missing here
            raise ConfigurationError(
                f"{model_uri} cannot be loaded with mlflow.pyfunc (flavors: {sorted(flavors)}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        loader = str(flavors.get("python_function", {}).get("loader_module", "pyfunc"))
        yield LoadedModel(model_uri, loader, signature, pyfunc=model)
