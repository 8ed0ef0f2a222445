"""Rollout target resolution tells a missing version (permanent) from MLflow being down (retryable)."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from blocks.mlflow_tracking import MLflowTracking
from tasks.core.errors import ConfigurationError, RetryableError, ServiceUnavailable
from tasks.rollout import target


class _Registry:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_model_version(self, name: str, version: str) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST), ConfigurationError,
         "has no version"),
        (MlflowException("API request failed: connection refused", error_code=INTERNAL_ERROR), ServiceUnavailable,
         "MLflow could not read"),
    ],
)  # fmt: skip
def test_a_missing_version_is_permanent_and_an_mlflow_outage_retryable(
    monkeypatch: pytest.MonkeyPatch, error: Exception, expected: type[Exception], words: str
) -> None:
    monkeypatch.setattr(target, "client_for", lambda tracking: _Registry(error))
    with pytest.raises(expected, match=words) as raised:
        target.resolve_target.fn(MLflowTracking(tracking_uri="http://mlflow:5000"), "digits", "3")
    assert isinstance(raised.value, RetryableError) == (expected is ServiceUnavailable)
