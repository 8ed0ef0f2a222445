"""``TrainerContext.log_model``: a torch module or a scikit-learn estimator logged as the contract wants it.

The signature is inferred from five validation rows of the dataset and the model's own answer to them, after
that answer was checked against the task (classification: ``[5, C]``; regression: ``[5]`` or ``[5, 1]``), so a
model that does not fit the dataset fails here, in the trainer, naming both shapes, not later in evaluation.

- torch: exported with ``torch.export`` (``pt2``: loads without pickle or the trainer's code) when it exports;
  else the pickled module, with the folder of the package that defines its class as ``code_paths`` so it
  loads where that package is not installed. The module is moved to the CPU and put in eval mode. A trainer whose
  module is known to export passes ``serialization_format="pt2"`` and skips the trial export (a second or more).
- scikit-learn: ``mlflow.sklearn`` with ``pyfunc_predict_fn="predict_proba"`` for classifiers, whose
  ``classes_`` must be the dataset's classes in output order (as class indices, stored values or names).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workloads.sdk import contract as c

if TYPE_CHECKING:
    import numpy as np

    from workloads.sdk.context import TrainerContext

SAMPLE_ROWS = 5


def _kind(model: Any) -> str:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    if hasattr(model, "fit") and hasattr(model, "get_params") and hasattr(model, "predict"):
        return "sklearn"
    return ""


def _plain(values: Any) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in values]


def check_answer(ctx: TrainerContext, output: np.ndarray, what: str) -> None:
    """Fail (exit 2) when the model's answer to the sample rows does not have the task's shape."""
    n = output.shape[0] if output.ndim else 0
    if ctx.task == "classification":
        classes = len(ctx.class_names)
        if output.shape != (n, classes):
            ctx.fail(
                f"{what} answers {SAMPLE_ROWS} rows with shape {list(output.shape)}; the dataset has {classes} "
                f"classes: expected [{SAMPLE_ROWS}, {classes}] in the order of ctx.class_names",
                c.EXIT_CONFIG,
            )
    elif output.shape not in ((n,), (n, 1)):
        ctx.fail(
            f"{what} answers {SAMPLE_ROWS} rows with shape {list(output.shape)}; a regression model answers "
            f"[{SAMPLE_ROWS}] or [{SAMPLE_ROWS}, 1] values",
            c.EXIT_CONFIG,
        )


def _package_folder(cls: type) -> list[str]:
    """The folder of the top-level package that defines ``cls``, unless it is installed or is ``__main__``."""
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if module is None or file is None or cls.__module__ == "__main__" or "site-packages" in file:
        return []
    top = cls.__module__.split(".")[0]
    path = Path(file).resolve()
    for parent in path.parents:
        if parent.name == top and (parent / "__init__.py").exists():
            return [str(parent)]
    return [str(path)] if path.stem == top else []


def _exports(torch: Any, model: Any, example: Any) -> bool:
    """Whether ``torch.export`` takes the module with a dynamic batch (checked before MLflow tries, so a failed
    attempt leaves no broken model on the run)."""
    from torch.export import Dim

    try:
        torch.export.export(model, (example,), dynamic_shapes=({0: Dim.AUTO},))
    except Exception:
        return False
    return True


def _log_torch(ctx: TrainerContext, model: Any, x: np.ndarray, kwargs: dict[str, Any]) -> Any:
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model = model.to("cpu").eval()
    example = torch.from_numpy(x)
    with torch.no_grad():
        output = model(example).numpy()
    check_answer(ctx, output, f"the module {type(model).__name__}")
    kwargs.setdefault("signature", infer_signature(x, output))
    kwargs.setdefault("pip_requirements", [f"torch=={torch.__version__.split('+')[0]}"])
    # A trainer that knows its module exports says serialization_format="pt2" and saves the trial export.
    chosen = kwargs.pop("serialization_format", None) or ("pt2" if _exports(torch, model, example) else "pickle")
    if chosen == "pt2":
        return mlflow.pytorch.log_model(model, input_example=x, serialization_format="pt2", **kwargs)
    code = _package_folder(type(model))
    if code:
        kwargs.setdefault("code_paths", code)
    return mlflow.pytorch.log_model(model, input_example=x, serialization_format="pickle", **kwargs)


def _log_sklearn(ctx: TrainerContext, model: Any, x: np.ndarray, kwargs: dict[str, Any]) -> Any:
    import mlflow.sklearn
    import sklearn
    from mlflow.models import infer_signature

    rows = x.reshape((x.shape[0], -1))
    if ctx.task == "classification":
        if not hasattr(model, "predict_proba"):
            ctx.fail(
                f"{type(model).__name__} has no predict_proba: a classifier must answer class probabilities",
                c.EXIT_CONFIG,
            )
        classes = _plain(getattr(model, "classes_", []))
        orders = (list(range(len(ctx.class_names))), _plain(ctx.manifest.labels), _plain(ctx.class_names))
        if classes not in orders:
            ctx.fail(
                f"{type(model).__name__}.classes_ is {classes}; the dataset's classes in output order are "
                f"{_plain(ctx.class_names)}: fit it on the y of ctx.read_split (class indices 0..{len(orders[0]) - 1})",
                c.EXIT_CONFIG,
            )
        output = model.predict_proba(rows)
        kwargs.setdefault("pyfunc_predict_fn", "predict_proba")
    else:
        output = model.predict(rows)
    import numpy as np

    output = np.asarray(output)
    check_answer(ctx, output, f"the estimator {type(model).__name__}")
    kwargs.setdefault("signature", infer_signature(rows, output))
    kwargs.setdefault("pip_requirements", [f"scikit-learn=={sklearn.__version__}"])
    return mlflow.sklearn.log_model(model, input_example=rows, **kwargs)


def log_model(ctx: TrainerContext, model: Any, **kwargs: Any) -> str:
    """Log ``model`` into the launcher's run under the name ``model``; other ``kwargs`` go to MLflow's
    ``log_model`` (``pip_requirements``, ``code_paths``, ...). Returns the model URI."""
    from workloads.quiet import quiet_mlflow

    quiet_mlflow()  # before MLflow's first import: it reads its logging switches then
    import mlflow
    from mlflow import MlflowClient

    kind = _kind(model)
    if not kind:
        ctx.fail(
            f"log_model takes a torch.nn.Module or a scikit-learn estimator, got {type(model).__name__}; log other "
            f"models with mlflow.<flavor>.log_model(..., name='{c.MODEL_NAME}') into MLFLOW_RUN_ID",
            c.EXIT_CONFIG,
        )
    x, _ = ctx.read_split("val")
    x = x[:SAMPLE_ROWS]
    mlflow.set_tracking_uri(ctx.tracking_uri)
    # Else MLflow files the LoggedModel under the process's default experiment, not the run's.
    mlflow.set_experiment(experiment_id=MlflowClient(ctx.tracking_uri).get_run(ctx.run_id).info.experiment_id)
    kwargs = {"name": c.MODEL_NAME, "run_id": ctx.run_id, **kwargs}
    info = _log_torch(ctx, model, x, kwargs) if kind == "torch" else _log_sklearn(ctx, model, x, kwargs)
    return str(info.model_uri)
