"""The canary-policy block: how a challenger earns traffic, and what makes the rollout give up on it.

The rollout stage (flows/rollout.py) walks ``step_weights``; at each step the canary gets that share of
traffic for ``analysis_seconds`` and must pass every threshold here (rules in tasks/rollout/canary.py and
docs/rollout.md). The ``local_*`` traffic fields (rate, concurrency, timeout) set gpuflow's replay of the
labelled test split, which both backends send: locally to the two processes, on a cluster through the
Service or gateway clients use (the names predate the cluster backend and stay for saved blocks).
``local_server_commands`` only concerns local processes.

The labelled checks depend on the model's task (its ``gpuflow.task`` tag): a classifier is held to
``min_accuracy`` and exact agreement with stable; a regressor to ``max_rmse_ratio`` and agreement within
``agreement_atol + agreement_rtol * |stable|``. Those fields are empty by default, meaning the task's default;
one set for the other task is refused before any server starts (:meth:`CanaryPolicy.for_task`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from blocks.loading import load_saved
from tasks.core.errors import ConfigurationError
from tasks.core.types import Track

DEFAULT_MIN_ACCURACY = 0.9
DEFAULT_MAX_RMSE_RATIO = 1.1
DEFAULT_AGREEMENT_ATOL = 1e-6
DEFAULT_AGREEMENT_RTOL = 0.1
_TASK_FIELDS = {
    "classification": ("min_accuracy",),
    "regression": ("max_rmse_ratio", "agreement_atol", "agreement_rtol"),
}


@dataclass(frozen=True)
class TaskThresholds:
    """The labelled checks' thresholds for one task, the policy's empty fields filled with the task's defaults."""

    task: str
    min_accuracy: float | None = None  # classification
    max_rmse_ratio: float | None = None  # regression
    agreement_atol: float = 0.0  # regression: |canary - stable| <= atol + rtol * |stable|
    agreement_rtol: float = 0.0

    def agree(self, canary: float, stable: float) -> bool:
        return abs(canary - stable) <= self.agreement_atol + self.agreement_rtol * abs(stable)


class CanaryPolicy(Block):
    """Canary steps and the thresholds a challenger must hold at each one before it replaces the champion.

    Example:
        ```python
        from blocks.canary_policy import CanaryPolicy
        policy = CanaryPolicy.load("BLOCK_NAME")  # e.g. "production"
        ```
    """

    _block_type_name = "gpuflow Canary Policy"
    _block_type_slug = "gpuflow-canary-policy"

    step_weights: list[int] = Field(
        default_factory=lambda: [10, 25, 50, 100],
        description="Percent of traffic the canary gets at each step, strictly increasing, each in 1..100. "
        "The canary is promoted once the last step passes.",
    )
    analysis_seconds: float = Field(
        default=60.0, gt=0, description="Analysis window of each step: traffic flows this long before it continues."
    )
    check_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often a step is checked before its window ends (at most once per window). A failing "
        "check (with at least min_requests canary requests) rolls back at once; only the window's end can "
        "continue or promote.",
    )
    min_requests: int = Field(
        default=100,
        ge=1,
        description="Canary requests (as its /metrics counts them) a step needs before its figures are judged; "
        "a step that ends with fewer rolls back (not enough evidence to promote).",
    )
    max_error_rate: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Highest share of canary requests answered non-2xx or not at all."
    )
    max_p95_latency_ratio: float = Field(
        default=1.5, gt=0, description="Highest canary p95 latency divided by the stable p95 latency (server side)."
    )
    latency_tolerance_seconds: float = Field(
        default=0.005,
        ge=0.0,
        description="A canary p95 at most this much above the stable p95 passes whatever the ratio: millisecond "
        "p95s differ by histogram bucket resolution (2.5 to 5 ms is one bucket) and by the canary's smaller share of "
        "traffic (a rarely woken server answers slower), not by the model. 0 judges by the ratio alone.",
    )
    min_accuracy: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Classification only: lowest canary accuracy on labelled traffic (answers vs labels). "
        f"Empty: {DEFAULT_MIN_ACCURACY}.",
    )
    min_agreement: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Lowest share of canary answers that agree with the stable version's answer for the same row: "
        "the same class, or for regression within agreement_atol + agreement_rtol x |stable|.",
    )
    max_rmse_ratio: float | None = Field(
        default=None,
        gt=0,
        description="Regression only: highest canary RMSE divided by stable's RMSE, both on the same labelled "
        f"replayed rows. Empty: {DEFAULT_MAX_RMSE_RATIO}.",
    )
    agreement_atol: float | None = Field(
        default=None,
        ge=0.0,
        description="Regression only: absolute tolerance (target units) of agreement, "
        f"|canary - stable| <= atol + rtol x |stable|. Empty: {DEFAULT_AGREEMENT_ATOL:g}.",
    )
    agreement_rtol: float | None = Field(
        default=None,
        ge=0.0,
        description=f"Regression only: relative tolerance of agreement (see agreement_atol). Empty: "
        f"{DEFAULT_AGREEMENT_RTOL:g}.",
    )
    server_start_timeout_seconds: float = Field(
        default=180.0, gt=0, description="How long a model server may take to answer GET /readyz with 200."
    )
    local_requests_per_second: float = Field(
        default=200.0,
        gt=0,
        description="Requests per second the traffic driver replays (local processes, or the cluster's Service).",
    )
    local_concurrency: int = Field(
        default=4, ge=1, le=64, description="Requests the traffic driver keeps in flight at most (both backends)."
    )
    local_request_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="A replayed request unanswered after this long counts as an error (both backends).",
    )
    local_server_commands: dict[Track, list[str]] = Field(
        default_factory=dict,
        description="Local backend, for tests: run `python -m <these arguments>` instead of `python -m "
        'workloads.server` for a role, e.g. {"canary": ["tests.fixtures.bad_servers", "--error-rate", "0.5"]}; '
        "the model, host and port flags are appended. Leave empty.",
    )

    @field_validator("step_weights")
    @classmethod
    def _weights_increase(cls, weights: list[int]) -> list[int]:
        if not weights:
            raise ValueError("step_weights must hold at least one step, e.g. [10, 25, 50, 100]")
        if any(not 1 <= weight <= 100 for weight in weights):
            raise ValueError(f"step_weights {weights}: every weight must be a percent between 1 and 100")
        if any(later <= earlier for earlier, later in pairwise(weights)):
            raise ValueError(f"step_weights {weights} must be strictly increasing")
        return weights

    @field_validator("local_server_commands")
    @classmethod
    def _commands_name_a_module(cls, commands: dict[Track, list[str]]) -> dict[Track, list[str]]:
        for role, command in commands.items():
            if not command or not command[0].strip():
                raise ValueError(f"local_server_commands[{role!r}] must start with a module name")
        return commands

    def for_task(self, task: str) -> TaskThresholds:
        """The thresholds for a model of ``task``; a threshold set for the other task is a ConfigurationError."""
        if task not in _TASK_FIELDS:
            raise ConfigurationError(f"unknown model task {task!r}: expected one of {', '.join(_TASK_FIELDS)}")
        misplaced = [
            f"{name}={getattr(self, name)}"
            for other, names in _TASK_FIELDS.items()
            if other != task
            for name in names
            if getattr(self, name) is not None
        ]
        if misplaced:
            own = ", ".join(_TASK_FIELDS[task])
            raise ConfigurationError(
                f"the canary policy sets {', '.join(misplaced)}, which only applies to "
                f"{'regression' if task == 'classification' else 'classification'} models, but this model is a "
                f"{task} model: leave it empty (its thresholds are {own})"
            )
        if task == "classification":
            accuracy = self.min_accuracy if self.min_accuracy is not None else DEFAULT_MIN_ACCURACY
            return TaskThresholds(task, min_accuracy=accuracy)
        return TaskThresholds(
            task,
            max_rmse_ratio=self.max_rmse_ratio if self.max_rmse_ratio is not None else DEFAULT_MAX_RMSE_RATIO,
            agreement_atol=self.agreement_atol if self.agreement_atol is not None else DEFAULT_AGREEMENT_ATOL,
            agreement_rtol=self.agreement_rtol if self.agreement_rtol is not None else DEFAULT_AGREEMENT_RTOL,
        )

    def first_step_requests(self) -> float:
        """Canary requests the first (smallest) step receives at most: rate x window x weight."""
        return self.local_requests_per_second * self.analysis_seconds * self.step_weights[0] / 100

    def step_requests(self) -> int:
        """Requests one step sends at most (rate x window): as many labelled rows as the replay needs to send
        none twice in a step."""
        return math.ceil(self.local_requests_per_second * self.analysis_seconds)

    def check_reachable(self) -> None:
        """Refuse a policy that can never promote: its smallest step cannot collect ``min_requests``.

        Every step needs ``min_requests`` canary requests before its window ends, and the first step has the
        smallest share of the replayed traffic; a window too short for it rolls back every candidate (a copy
        of the champion included), which the user would otherwise learn only after servers started.
        """
        expected = self.first_step_requests()
        if expected + 1e-9 >= self.min_requests:
            return
        weight = self.step_weights[0]
        needed = self.min_requests * 100 / (self.local_requests_per_second * weight)
        raise ConfigurationError(
            f"this canary policy can never promote: step 1 gets {self.local_requests_per_second:g} req/s x "
            f"{self.analysis_seconds:g} s x {weight} % = {expected:g} canary requests, fewer than min_requests "
            f"{self.min_requests}; use an analysis window of at least {needed:g} s (--canary-seconds), a higher "
            "local_requests_per_second or first step weight, or a lower min_requests"
        )


def rollout_policy(name: str | None, analysis_seconds: float | None = None) -> CanaryPolicy:
    """The policy a rollout will use (``analysis_seconds`` overrides the window), refused if it can never promote.

    The one place the rollout flow, ``ml_pipeline`` (before any work) and ``gpuflow run`` (before anything
    starts) check a policy, so all three refuse the same configurations with the same figures.
    """
    policy = resolve_policy(name)
    if analysis_seconds is not None:
        if analysis_seconds <= 0:
            raise ConfigurationError(f"analysis_seconds must be above 0, got {analysis_seconds}")
        policy = policy.model_copy(update={"analysis_seconds": float(analysis_seconds)})
    policy.check_reachable()
    return policy


def resolve_policy(name: str | None) -> CanaryPolicy:
    """A saved block by name, or the default policy when no name is given."""
    if not name:
        return CanaryPolicy()
    return load_saved(CanaryPolicy, name)
