"""How fast a bad canary is caught, and how much traffic it answered before that.

Registers the digits model twice in a fresh GPUFLOW_HOME (champion and challenger, same weights), then runs the
real ``rollout`` flow with the challenger served by the real server with injected faults (a share of its
inference calls fail with HTTP 500; tests/fixtures/bad_servers.py). Two analysis cadences are compared on the
same canary, one after the other:

- ``interim checks``: the policy checks every ``--interval`` seconds and rolls back at the first check with
  ``--min-requests`` canary requests (gpuflow's default behaviour, scaled down);
- ``window end only``: the same policy checking once, at the end of the window (the usual peer: an analysis
  run per step).

For each it prints the time from the canary's first request to the rollback decision, that time as a share of
the analysis window, the share of all user requests the canary answered (goal: no more than the first step's
weight) and how many canary failures the driver answered from stable (users saw stable's answer instead).

    python -m bench.bench_canary [--window 4] [--interval 0.25] [--error-rate 0.5] [--rate 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup(home: Path) -> tuple[str, str]:
    """A dataset and one logged model in a fresh home; returns (dataset uri, training run id)."""
    os.environ["GPUFLOW_HOME"] = str(home / "gpuflow")
    os.environ["PREFECT_HOME"] = str(home / "prefect")  # an ephemeral API of its own, not the user's profile
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "GPUFLOW_STORE_URI"):
        os.environ.pop(var, None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    sys.path.insert(0, str(ROOT))
    from tasks.core import settings
    from tests.fixtures.datasets import write_digits_dataset
    from tests.fixtures.models import log_training_run, train_digits_model

    dataset = write_digits_dataset(settings.store_uri())
    return dataset, log_training_run(settings.tracking_uri(), train_digits_model(dataset, "good"))


def _register(name: str, run_id: str) -> None:
    from mlflow import MlflowClient

    from tasks.core import settings
    from tasks.tracking.model_registry import model_location

    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    client.create_registered_model(name)
    tags = client.get_run(run_id).data.tags
    for alias in ("champion", "challenger"):
        version = client.create_model_version(
            name,
            source=model_location(client, tags["gpuflow.model_uri"]),
            run_id=run_id,
            tags={"gpuflow.labels": tags["gpuflow.labels"], "gpuflow.gate.passed": "true"},
        )
        client.set_registered_model_alias(name, alias, str(version.version))


def one_rollout(dataset: str, run_id: str, args: argparse.Namespace, interval: float) -> dict[str, float]:
    from blocks.canary_policy import CanaryPolicy
    from flows.rollout import rollout

    name = f"bench-canary-{uuid.uuid4().hex[:6]}"
    _register(name, run_id)
    policy = f"{name}-policy"
    CanaryPolicy(
        step_weights=[args.first_weight, 50, 100],
        analysis_seconds=args.window,
        check_interval_seconds=interval,
        min_requests=args.min_requests,
        local_requests_per_second=args.rate,
        local_server_commands={"canary": ["tests.fixtures.bad_servers", "--error-rate", str(args.error_rate)]},
    ).save(policy, overwrite=True)
    began = time.perf_counter()
    result = rollout(model_name=name, dataset_uri=dataset, policy=policy)
    wall = time.perf_counter() - began
    if result.decision != "rolled_back" or len(result.steps) != 1:
        raise SystemExit(f"expected a rollback at the first step, got {result.decision}: {result.reason}")
    step = result.steps[0]
    users = step.stable.routed + step.canary.routed
    assert result.time_to_decision_seconds is not None
    return {
        "to_decision": result.time_to_decision_seconds,
        "window_share": result.time_to_decision_seconds / args.window,
        "canary_answered": step.canary.answered / users,
        "canary_routed": step.canary.routed / users,
        "canary_errors": float(step.canary.errors),
        "retried": float(step.retried_on_stable),
        "unanswered": float(step.unanswered),
        "users": float(users),
        "stage": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=4.0, help="analysis window per step, seconds")
    parser.add_argument("--interval", type=float, default=0.25, help="interim check interval, seconds")
    parser.add_argument("--error-rate", type=float, default=0.5, help="share of the canary's inference calls failing")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second the driver sends")
    parser.add_argument("--min-requests", type=int, default=20, help="canary requests before a check judges")
    parser.add_argument("--first-weight", type=int, default=10, help="percent of traffic at the first step")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gpuflow-bench-canary-") as tmp:
        dataset, run_id = _setup(Path(tmp))
        rows = {
            "interim checks": one_rollout(dataset, run_id, args, args.interval),
            "window end only": one_rollout(dataset, run_id, args, args.window),
        }

    print(
        f"\nbad canary: {args.error_rate:.0%} of inference calls fail; first step {args.first_weight}% for "
        f"{args.window:g} s at {args.rate:g} req/s; checks need {args.min_requests} canary requests\n"
    )
    header = (
        f"{'analysis':<18}{'to rollback':>13}{'of window':>11}{'canary answered':>17}{'routed':>9}"
        f"{'canary errors':>15}{'answered by stable':>20}{'unanswered':>12}{'stage':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        print(
            f"{label:<18}{row['to_decision']:>11.2f} s{row['window_share']:>11.0%}{row['canary_answered']:>17.1%}"
            f"{row['canary_routed']:>9.1%}{row['canary_errors']:>15.0f}{row['retried']:>20.0f}"
            f"{row['unanswered']:>12.0f}{row['stage']:>7.1f} s"
        )
    fast = rows["interim checks"]
    slow = rows["window end only"]
    print(
        f"\ninterim checks decide {slow['to_decision'] / fast['to_decision']:.1f}x sooner than a window-end analysis; "
        f"goal met: rolled back within the first window ({fast['window_share']:.0%} of it) having answered "
        f"{fast['canary_answered']:.1%} <= {args.first_weight}% of requests: "
        f"{fast['window_share'] <= 1 and fast['canary_answered'] <= args.first_weight / 100}"
    )


if __name__ == "__main__":
    main()
