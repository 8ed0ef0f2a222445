"""The quality-gate block: what a challenger must reach before it may replace the champion.

A gate is a list of rules, each on one metric of the test split: an absolute bound (``at_least`` /
``at_most``) and/or the largest regression allowed against the champion (in the metric's units, or
``relative`` as a fraction of the champion's figure). With no rules the task's default set applies:
classification is ``min_accuracy``, ``max_regression`` (accuracy) and ``max_ece`` below; regression is
RMSE at most 5 % worse than the champion and R² at least 0. The rules are applied, and checked against
what the evaluation produces for the task, in tasks/evaluation/gate.py (docs/evaluation.md).
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, model_validator

from blocks.loading import field_problems, load_saved
from tasks.core.errors import ConfigurationError
from tasks.core.spec_files import read_spec_file

METRIC_NAME = r"^[a-z][a-z0-9_]*$"
FUNCTION_REFERENCE = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"


class GateRule(BaseModel):
    """One rule: a metric, an absolute bound and/or the largest regression against the champion."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(
        pattern=METRIC_NAME,
        description="Metric the rule checks: accuracy, macro_f1, log_loss, ece, roc_auc (binary), rmse, mae, r2, "
        "inference_ms_per_sample, latency_p50_ms, or a custom metric declared on this gate.",
    )
    at_least: float | None = Field(default=None, description="Lowest value that passes; empty: no floor.")
    at_most: float | None = Field(default=None, description="Highest value that passes; empty: no cap.")
    max_regression: float | None = Field(
        default=None,
        ge=0.0,
        description="Largest move in the worse direction against the champion on the same test split that "
        "passes (checked only when there is a champion); empty: not compared.",
    )
    relative: bool = Field(
        default=False,
        description="Read max_regression as a fraction of the champion's figure (0.05 = 5 % worse) instead of "
        "in the metric's own units.",
    )

    @model_validator(mode="after")
    def _one_bound_at_least(self) -> GateRule:
        if self.at_least is None and self.at_most is None and self.max_regression is None:
            raise ValueError(f"gate rule on {self.metric!r} sets none of at_least, at_most and max_regression")
        if self.relative and self.max_regression is None:
            raise ValueError(f"gate rule on {self.metric!r}: relative needs max_regression")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"gate rule on {self.metric!r}: at_least {self.at_least} is above at_most {self.at_most}")
        return self


class CustomMetric(BaseModel):
    """A team's own metric function, computed on the test split's predictions and usable in rules by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        pattern=METRIC_NAME, description="Name rules use and MLflow logs as test_<name> (lowercase, digits, _)."
    )
    function: str = Field(
        pattern=FUNCTION_REFERENCE,
        description="package.module:function, importable where evaluate runs; called as fn(y_true, y_pred, ...) "
        "and returning one number (docs/evaluation.md gives the arguments per task).",
    )
    higher_is_better: bool = Field(description="True when a larger value is a better model (recall), False if not.")


class QualityGate(Block):
    """Rules the evaluate stage checks before a challenger may replace the champion.

    Example:
        ```python
        from blocks.quality_gate import QualityGate
        gate = QualityGate.load("BLOCK_NAME")  # e.g. "production"
        ```
    """

    _block_type_name = "gpuflow Quality Gate"
    _block_type_slug = "gpuflow-quality-gate"

    min_accuracy: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Lowest test accuracy that passes (classification default rules; unused when rules are set).",
    )
    max_regression: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Largest drop in test accuracy against the champion (absolute, 0.02 = 2 points) that passes "
        "(classification default rules; unused when rules are set).",
    )
    max_ece: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Largest expected calibration error that passes; empty: not checked (classification default "
        "rules; unused when rules are set).",
    )
    rules: list[GateRule] = Field(
        default_factory=list,
        description="The gate's rules, replacing the task's default set; empty: the defaults (classification: the "
        "three fields above; regression: rmse at most 5 % worse than the champion and r2 at least 0).",
    )
    custom_metrics: list[CustomMetric] = Field(
        default_factory=list,
        description="Your own metric functions, computed on every evaluation and usable in rules by name.",
    )

    @model_validator(mode="after")
    def _custom_names_unique(self) -> QualityGate:
        names = [metric.name for metric in self.custom_metrics]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"custom metric name(s) declared twice: {repeated}")
        return self


GATE_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def resolve_gate(name: str | None) -> QualityGate:
    """A gate file (YAML/JSON, the block's fields), a saved block by name, or the default thresholds when no name
    is given; an invalid file or saved block is a ConfigurationError naming its fields."""
    if not name:
        return QualityGate()
    if names_gate_file(name):
        return gate_from_file(name.strip())
    return load_saved(QualityGate, name)


def names_gate_file(name: str) -> bool:
    """Whether ``--gate`` names a file (by its suffix) rather than a saved block."""
    return name.strip().lower().endswith(GATE_FILE_SUFFIXES)


def gate_from_file(ref: str) -> QualityGate:
    """The gate a YAML or JSON file declares (the same fields as the block's form)."""
    import yaml
    from pydantic import ValidationError

    path, text = read_spec_file(ref, "quality gate", ConfigurationError)
    try:
        return QualityGate.model_validate(yaml.safe_load(text) or {})
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"quality gate file {path} is not valid YAML or JSON: {exc}") from None
    except ValidationError as invalid:
        raise ConfigurationError(f"quality gate file {path} is not valid: {field_problems(invalid, 'gate')}") from None
