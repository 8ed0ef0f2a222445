"""Which code trains the model: the built-in MLP, an SDK entry point, or any command that keeps the trainer contract.

Declared as YAML/JSON or a saved ``TrainerSpec`` block, chosen with ``gpuflow run --trainer`` or
``ml_pipeline(trainer=...)``. Hyperparameters are typed when the spec declares their types (the built-in trainer
always does): an unknown or mistyped key is a :class:`TrainerSpecError` before any run starts. The contract
itself (environment in, model and metrics out, exit codes) is docs/trainers.md.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.errors import ConfigurationError

CONTRACT = "gpuflow-trainer/1"
HyperparameterType = Literal["int", "float", "str", "bool"]
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")

# The built-in trainer's hyperparameters, their types and defaults (workloads/trainer/config.py's flags).
BUILTIN_HYPERPARAMETERS: dict[str, HyperparameterType] = {
    "epochs": "int",
    "batch_size": "int",
    "learning_rate": "float",
    "hidden_size": "int",
    "seed": "int",
}


class TrainerSpecError(ConfigurationError):
    """A trainer spec or hyperparameter that cannot be used; the message names it and what was expected."""


class TrainerSpec(BaseModel):
    """The trainer of a pipeline: what runs, with which hyperparameters, and how long it may stay silent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_point: str | None = Field(
        default=None,
        description="An SDK trainer function, package.module:function (importable where the trainer runs).",
    )
    command: list[str] | None = Field(
        default=None,
        description="A command that keeps the trainer contract, e.g. [python, train.py]; 'python' is the "
        "interpreter running gpuflow's launcher.",
    )
    image: str | None = Field(
        default=None,
        description="Kubernetes only: the image holding this code (built FROM gpuflow's); empty: the compute "
        "block's image.",
    )
    working_dir: str | None = Field(
        default=None, description="Local runs: the folder the trainer starts in and imports from (your project)."
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Hyperparameters handed to the trainer as JSON (GPUFLOW_HPARAMS)."
    )
    hyperparameter_types: dict[str, HyperparameterType] = Field(
        default_factory=dict,
        description="Declared types (int, float, str, bool); when given, a key not declared or of another "
        "type is refused before the run.",
    )
    stall_timeout_seconds: float | None = Field(
        default=None, gt=0, description="Stop the trainer when it reports no metrics for this long; empty: never."
    )
    stop_grace_seconds: float = Field(
        default=30, ge=0, description="After an early-stop request, how long the trainer may take to finish."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> TrainerSpec:
        if self.entry_point is not None and self.command is not None:
            raise ValueError("give entry_point or command, not both")
        if self.entry_point is not None and not _ENTRY_POINT.match(self.entry_point):
            raise ValueError(f"entry_point must look like package.module:function, got {self.entry_point!r}")
        if self.command is not None and (not self.command or not all(part.strip() for part in self.command)):
            raise ValueError("command must be a non-empty list of non-empty strings")
        if self.image is not None and self.kind == "builtin":
            raise ValueError("image needs an entry_point or a command to run in it")
        return self

    @property
    def kind(self) -> Literal["builtin", "entrypoint", "command"]:
        if self.entry_point is not None:
            return "entrypoint"
        return "command" if self.command is not None else "builtin"

    def declared_types(self) -> dict[str, HyperparameterType]:
        return BUILTIN_HYPERPARAMETERS if self.kind == "builtin" else dict(self.hyperparameter_types)

    def describe(self) -> str:
        """One line for logs, lineage and the ``gpuflow.trainer`` tag: what code trained the model."""
        what = {
            "builtin": "built-in MLP (workloads.trainer.entry:train)",
            "entrypoint": f"entry point {self.entry_point}",
            "command": f"command {shlex.join(self.command or [])}",
        }[self.kind]
        return f"{what} in image {self.image}" if self.image else what

    def with_overrides(self, overrides: dict[str, Any]) -> TrainerSpec:
        """The spec with ``overrides`` merged into its hyperparameters, each checked against the declared types."""
        merged = {**self.hyperparameters, **overrides}
        checked = check_hyperparameters(merged, self.declared_types())
        return self.model_copy(update={"hyperparameters": checked})


def check_hyperparameters(values: dict[str, Any], types: dict[str, HyperparameterType]) -> dict[str, Any]:
    """``values`` with each declared key checked (ints accepted for floats); undeclared keys refused when any
    type is declared. Every problem is named in one error."""
    if not types:
        return dict(values)
    problems = []
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = types.get(key)
        if kind is None:
            problems.append(f"unknown hyperparameter {key!r} (declared: {', '.join(sorted(types))})")
        elif not _fits(value, kind):
            problems.append(f"hyperparameter {key!r} must be {kind}, got {value!r} ({type(value).__name__})")
        else:
            out[key] = float(value) if kind == "float" else value
    if problems:
        raise TrainerSpecError("; ".join(problems))
    return out


def _fits(value: Any, kind: HyperparameterType) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def parse_override(text: str, types: dict[str, HyperparameterType]) -> tuple[str, Any]:
    """``key=value`` from the command line: typed by the declared type, else read as JSON, else kept as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TrainerSpecError(f"--hp expects key=value, got {text!r}")
    kind = types.get(key)
    try:
        if kind == "str":
            return key, raw
        if kind == "bool" and raw.lower() in ("true", "false"):
            return key, raw.lower() == "true"
        return key, json.loads(raw)
    except json.JSONDecodeError:
        if kind in ("int", "float"):
            raise TrainerSpecError(f"hyperparameter {key!r} must be {kind}, got {raw!r}") from None
        return key, raw


def trainer_spec_from_data(data: Any, where: str = "trainer spec") -> TrainerSpec:
    """A spec from a parsed mapping; each mistake named with its field."""
    if isinstance(data, TrainerSpec):
        return data
    if not isinstance(data, dict):
        raise TrainerSpecError(f"{where}: expected a mapping (entry_point or command, hyperparameters, ...)")
    try:
        spec = TrainerSpec.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(
            ".".join(str(p) for p in error["loc"])
            + ": " * bool(error["loc"])
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors()
        )
        raise TrainerSpecError(f"{where}: {details}") from None
    check_hyperparameters(spec.hyperparameters, spec.declared_types())
    return spec


def parse_trainer_text(text: str, where: str = "trainer spec") -> TrainerSpec:
    """A spec from YAML or JSON text."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrainerSpecError(f"{where} is not valid YAML or JSON: {exc}") from None
    return trainer_spec_from_data(data, where)
