"""A team's own metric functions, referenced as ``package.module:function`` on the quality-gate block.

The function runs on the test split's predictions and returns one number:

- classification: ``fn(y_true, y_pred, *, probabilities, labels) -> float`` where ``y_true`` and ``y_pred`` are
  numpy arrays of class names (strings, as in the model's ``gpuflow.labels``; e.g. "malignant"), one per test row,
  ``probabilities`` is the ``[rows, classes]`` float64 matrix the model gave and ``labels`` the class names in its
  column order;
- regression: ``fn(y_true, y_pred) -> float`` with float64 arrays of true and predicted values.

Each metric declares its direction (``higher_is_better``) so the gate can tell better from worse. A reference that
does not import is a ``ConfigurationError`` raised by :func:`resolve` (run by the gate check before any training);
a function that raises or returns no number is a :class:`CustomMetricFailed` naming it, at scoring time.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.core.errors import ConfigurationError, PermanentError


class CustomMetricFailed(PermanentError):
    """A custom metric function raised, or returned something that is not a number."""


MetricFunction = Callable[..., Any]


def _import_from_project(module_name: str) -> Any:
    """The module from the installed packages, else from the current folder (your project, where you run gpuflow:
    the ``gpuflow`` command's own path does not include it)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.split(".")[0] or here in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def resolve(reference: str, name: str) -> MetricFunction:
    """The function behind ``package.module:function``; a ``ConfigurationError`` naming both when it is not there."""
    module_name, colon, attribute = reference.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(
            f"custom metric {name!r}: function {reference!r} is not a reference of the form package.module:function"
        )
    try:
        module = _import_from_project(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while it loads
        raise ConfigurationError(
            f"custom metric {name!r}: cannot import module {module_name!r} of {reference!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ConfigurationError(
                f"custom metric {name!r}: module {module_name!r} has no {attribute!r} ({reference})"
            )
    if not callable(found):
        raise ConfigurationError(f"custom metric {name!r}: {reference} is a {type(found).__name__}, not a function")
    return found


def call(name: str, reference: str, fn: MetricFunction, y_true: Any, y_pred: Any, **extra: Any) -> float:
    """Run one custom metric; what it raises or a result that is not a real number names the function."""
    try:
        result = fn(y_true, y_pred, **extra)
    except Exception as exc:
        raise CustomMetricFailed(f"custom metric {name!r} ({reference}) raised {type(exc).__name__}: {exc}") from exc
    try:
        value = float(np.asarray(result, dtype=np.float64).item())
    except (TypeError, ValueError) as exc:
        raise CustomMetricFailed(
            f"custom metric {name!r} ({reference}) returned {str(result)[:80]!r}; expected one number"
        ) from exc
    if math.isinf(value):
        raise CustomMetricFailed(f"custom metric {name!r} ({reference}) returned {value}; expected a finite number")
    return value
