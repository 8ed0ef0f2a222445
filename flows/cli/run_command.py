"""``gpuflow run``: the whole pipeline on the embedded defaults (or saved blocks), a summary, an honest exit code.

Exit codes: 0 success; 1 a stage failed; 3 the quality gate rejected the model; 4 the canary was rolled back.
Importing this module costs only argparse: torch, MLflow and Prefect are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.cli.arguments import EXIT_FAILED, EXIT_GATE, EXIT_OK, EXIT_ROLLED_BACK, add_trainer_options, positive_float


def add_run_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``run`` to the ``gpuflow`` command's subparsers."""
    run = subparsers.add_parser(
        "run",
        help="run prepare -> train -> evaluate -> rollout",
        description="Run the whole pipeline. Without servers configured it uses the embedded defaults: "
        "Prefect's ephemeral API, MLflow on SQLite and the store under GPUFLOW_HOME (default ./.gpuflow).",
    )
    run.add_argument(
        "--data",
        default="demo",
        help="raw CSV/Parquet: a file (path, file://, s3://bucket/key), a glob of parts ('data/*.csv', quoted), "
        "an S3 prefix of parts (s3://bucket/raw/), or 'demo'",
    )
    run.add_argument(
        "--dataset-name",
        default=None,
        help="prepared dataset name (default: the data file's name; digits for the demo)",
    )
    run.add_argument("--dataset-spec", metavar="FILE|BLOCK", help="dataset spec: YAML/JSON file or saved block name")
    run.add_argument("--model-name", default=None, help="registered model name (default: gpuflow-<dataset name>)")
    add_trainer_options(run)
    run.add_argument(
        "--trainer",
        metavar="FILE|BLOCK",
        help="your training code: trainer spec file or saved block (docs/trainers.md)",
    )
    run.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one of the trainer's hyperparameters (repeatable; typed by the spec's declared types)",
    )
    run.add_argument("--drop-duplicates", action="store_true", help="drop duplicate rows instead of failing")
    run.add_argument("--no-promote", action="store_true", help="register the model but never roll it out")
    run.add_argument("--data-store", metavar="BLOCK", help="saved DataStore block name")
    run.add_argument("--compute", metavar="BLOCK", help="saved compute-target block name")
    run.add_argument(
        "--serving", metavar="BLOCK", help="saved KubernetesServing block: run the canary as Deployments on a cluster"
    )
    run.add_argument("--tracking", metavar="BLOCK", help="saved MLflowTracking block name")
    run.add_argument("--gate", metavar="FILE|BLOCK", help="quality gate: YAML/JSON file or saved block name")
    run.add_argument("--policy", metavar="BLOCK", help="saved CanaryPolicy block name")
    run.add_argument(
        "--canary-seconds",
        type=positive_float,
        metavar="S",
        help="analysis window per canary step (default: the policy's, 60 s)",
    )
    run.add_argument("--pricing", metavar="BLOCK", help="saved GpuPricing block name")
    run.add_argument("--json", action="store_true", help="end stdout with one JSON object describing the run")
    return run


def _pipeline_parameters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {
        "data_uri": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "hidden_size": args.hidden_size,
        "seed": args.seed,
        "device": args.device,
        "drop_duplicates": args.drop_duplicates,
        "promote_on_pass": not args.no_promote,
        "data_store": args.data_store,
        "compute": args.compute,
        "serving": args.serving,
        "tracking": args.tracking,
        "gate": args.gate,
        "policy": args.policy,
        "canary_analysis_seconds": args.canary_seconds,
        "early_stop": args.early_stop,
        "patience": args.patience,
        "pricing": args.pricing,
    }
    if args.dataset_name:
        params["dataset_name"] = args.dataset_name
    if args.model_name:
        params["model_name"] = args.model_name
    if args.dataset_spec:
        params["dataset_spec"] = args.dataset_spec
    if args.trainer:
        params["trainer"] = args.trainer
    if args.hp:
        params["hyperparameters"] = hyperparameter_overrides(args)
    return params


def hyperparameter_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--hp key=value`` pairs, typed by the trainer spec's declared types (a block needs the Prefect API)."""
    from tasks.core.trainer_spec import parse_override
    from tasks.training.trainer_choice import resolve_trainer

    types = resolve_trainer(args.trainer).declared_types()
    return dict(parse_override(text, types) for text in args.hp)


def _summary(result: Any) -> str:
    from rich.console import Console
    from rich.table import Table

    from tasks.reporting.gpu_cost_text import run_cost_text, run_gpu_text

    table = Table(title="gpuflow run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    gate = result.gate
    verdict = "passed" if gate["passed"] else "FAILED: " + "; ".join(gate["reasons"])
    rows = [
        ("dataset", f"{result.dataset_name} {result.dataset_version}{' (cached)' if result.dataset_cache_hit else ''}"),
        ("training run", result.train_run_id),
        ("model", f"{result.model_name} version {result.model_version}"),
        *_headline_rows(result.metrics),
        ("quality gate", verdict),
        ("canary", _canary_text(result.canary)),
        ("champion", f"version {result.champion_version}" if result.champion_version else "none"),
        ("training stopped", result.stop_reason or "n/a"),
        ("GPU", run_gpu_text(result.gpu)),
        ("cost", run_cost_text(result.cost)),
        ("stage seconds", ", ".join(f"{k} {v:.1f}" for k, v in result.stage_seconds.items())),
        ("pipeline run", result.pipeline_run_id),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console = Console(file=None, force_terminal=False, width=110)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def _headline_rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """The test figures a reader looks at first: accuracy and macro F1 (plus ROC-AUC for a binary task), or RMSE,
    MAE and R² for regression."""
    names = {"accuracy": "test accuracy", "macro_f1": "macro F1", "roc_auc": "ROC-AUC"}
    if "rmse" in metrics:
        names = {"rmse": "test RMSE", "mae": "test MAE", "r2": "R²"}
    return [(label, f"{metrics[key]:.4f}") for key, label in names.items() if key in metrics] or [("test", "n/a")]


def _canary_text(canary: dict[str, Any] | None) -> str:
    if not canary:
        return "not run"
    lines = [f"{canary['decision'].replace('_', ' ')}: {canary['reason']}"]
    for index, step in enumerate(canary.get("steps") or [], start=1):
        lines.append(
            f"step {index} at {step['weight']}%: {step['decision']}"
            f" (canary {step['canary']['requests']} req, errors {_fmt(step['canary']['error_rate'])},"
            f" p95 ratio {_fmt(step.get('p95_ratio'))}, accuracy {_fmt(step['canary'].get('accuracy'))},"
            f" agreement {_fmt(step.get('agreement'))})"
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_result(result: Any, as_json: bool) -> None:
    sys.stdout.write(_summary(result))
    if as_json:
        payload = result.model_dump(mode="json")
        sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    sys.stdout.flush()


def refuse_early(args: argparse.Namespace) -> int | None:
    """What ``gpuflow run`` can refuse before any server boots or torch loads: a bad --data, --trainer or --gate
    file, a hopeless canary.

    The same checks (and messages) as the flows, which still run them all: the file exists, is not empty and
    its header has the schema's columns; a trainer or gate file exists and declares valid fields; the default
    canary policy can collect ``min_requests`` at step 1. Named blocks (policy, trainer, gate) are checked by
    ``ml_pipeline`` before any work (loading them needs the Prefect API).
    """
    from tasks.core.errors import GpuflowError
    from tasks.core.spec_files import looks_like_file
    from tasks.training.trainer_choice import resolve_trainer

    try:
        if not args.trainer or looks_like_file(args.trainer):  # a block name is loaded once the API is up
            resolve_trainer(args.trainer).with_overrides(hyperparameter_overrides(args))
        if args.gate:
            from blocks.quality_gate import gate_from_file, names_gate_file

            if names_gate_file(args.gate):
                gate_from_file(args.gate.strip())
        if args.dataset_spec:
            from tasks.data.spec import quick_check_spec

            quick_check_spec(args.data, args.dataset_spec)
        elif args.data.strip() != "demo":
            from tasks.data.demo import digits_schema
            from tasks.data.parts import quick_check_input

            quick_check_input(args.data, digits_schema())
        if not args.no_promote and not args.policy:
            from blocks.canary_policy import rollout_policy

            rollout_policy(None, args.canary_seconds)
    except GpuflowError as exc:
        return _fail(args, exc)
    return None


def _fail(args: argparse.Namespace, outcome: BaseException | None, message: str | None = None) -> int:
    from tasks.core.errors import GpuflowError

    message = str(outcome) if outcome is not None else (message or "pipeline failed")
    if args.json:
        print(json.dumps({"error": message, "error_type": type(outcome).__name__}))
    if not isinstance(outcome, GpuflowError):
        message = f"{type(outcome).__name__}: {message}"
    print(f"gpuflow: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _import_pipeline() -> None:
    import flows.pipeline  # noqa: F401 - torch, MLflow and the stages: the slow part of start-up


def run_command(args: argparse.Namespace) -> int:
    """Run ``gpuflow run``; returns the exit code."""
    from flows.prefect_server import prefect_api
    from tasks.core.errors import GpuflowError

    with prefect_api(_import_pipeline):
        from flows.pipeline import ml_pipeline

        try:
            parameters = _pipeline_parameters(args)
        except GpuflowError as exc:  # a saved trainer block that is missing, or an override it refuses
            return _fail(args, exc)
        state = ml_pipeline(**parameters, return_state=True)
    from tasks.core.errors import GateFailed, ModelRejected

    if state.is_completed():
        _print_result(state.result(), args.json)
        return EXIT_OK
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, ModelRejected) and outcome.result is not None:
        _print_result(outcome.result, args.json)
        print(f"gpuflow: {outcome}", file=sys.stderr)
        return EXIT_GATE if isinstance(outcome, GateFailed) else EXIT_ROLLED_BACK
    return _fail(args, outcome if isinstance(outcome, BaseException) else None, state.message)
