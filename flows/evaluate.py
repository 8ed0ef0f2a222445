"""The evaluate stage: score a trained model on the test split, register it, gate it, move the aliases.

Orchestration only: the metrics live in tasks/evaluation/scoring.py, the registry in
tasks/tracking/model_registry.py and the gate's rules in tasks/evaluation/gate.py. The flow returns its
:class:`Evaluation` even when the gate fails; whoever called it (``ml_pipeline``, an automation) decides what a
failed gate means.
"""

from __future__ import annotations

import tempfile
import time

from prefect import flow, get_run_logger

from blocks.data_store import resolve_data_store
from blocks.mlflow_tracking import resolve_tracking
from blocks.quality_gate import resolve_gate
from flows.prefect_server import own_prefect_ephemeral_server
from tasks.core import settings
from tasks.evaluation.gate import (
    GateDecision,
    apply_gate,
    check_gate_for_task,
    outcome,
    primary_regression,
    render_markdown,
)
from tasks.evaluation.metrics import PRIMARY_METRIC, headline_metrics
from tasks.evaluation.reporting import gate_tags
from tasks.evaluation.result import Evaluation
from tasks.evaluation.scoring import load_test_split, report_artifacts, report_evaluation, score_model
from tasks.reporting.stage_telemetry import stage_telemetry
from tasks.tracking.events import MODEL_EVALUATED, emit, model_resource
from tasks.tracking.model_registry import current_champion, move_aliases, register_version, trained_model
from tasks.tracking.runs import client_for, record_gpu_inventory, stage_run
from workloads.tags import (
    TAG_DATASET_URI,
    TAG_DATASET_VERSION,
    TAG_EVALUATE_RUN,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
    TAG_PREVIOUS_CHAMPION_VERSION,
    TAG_PROMOTED,
    TAG_TASK,
    TAG_TEST_METRIC_PREFIX,
    TAG_TRAIN_RUN,
)

own_prefect_ephemeral_server()  # flows called from Python use a server gpuflow owns (no leak, no race)

__all__ = ["Evaluation", "GateDecision", "evaluate"]


@flow(name="evaluate", log_prints=False)
def evaluate(
    train_run_id: str,
    dataset_uri: str,
    model_name: str = settings.DEFAULT_MODEL_NAME,
    gate: str | None = None,
    promote_on_pass: bool = True,
    data_store: str | None = None,
    tracking: str | None = None,
    parent_run_id: str | None = None,
) -> Evaluation:
    """Score a trained model on the test split, register it and let the quality gate decide on the champion.

    The new version always gets the `challenger` alias. When the gate passes and promote_on_pass is on,
    `champion` moves to it; when the gate fails, `champion` stays where it was. Returns the evaluation
    either way (the gate's verdict is in `gate`).

    Args:
        train_run_id: MLflow run of the training stage; its gpuflow.model_uri and gpuflow.labels tags name the model.
        dataset_uri: Prepared dataset folder (<store>/datasets/<name>/<version>) whose test split is scored.
        model_name: Registered model name in MLflow.
        gate: Saved QualityGate block name; empty uses the default thresholds.
        promote_on_pass: Move the champion alias to the new version when the gate passes.
        data_store: Saved DataStore block name; empty uses GPUFLOW_HOME/store.
        tracking: Saved MLflowTracking block name; empty uses MLFLOW_TRACKING_URI or SQLite under GPUFLOW_HOME.
        parent_run_id: MLflow parent run (the pipeline's) to nest this stage's run under.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    tracking_cfg = resolve_tracking(tracking)
    thresholds = resolve_gate(gate)
    store = resolve_data_store(data_store)

    model = trained_model(tracking_cfg, train_run_id)
    # One local copy of an S3 test split for the whole evaluation (challenger and champion), removed at the end.
    with tempfile.TemporaryDirectory(prefix="gpuflow-evaluate-") as scratch:
        split = load_test_split(store, dataset_uri, scratch)
        task = split.task
        # Before any run or registry write: a gate that cannot judge this task, or a model of another task.
        check_gate_for_task(thresholds, task, len(split.class_names) if task == "classification" else None)
        split.require_task(model.task, f"the model of training run {train_run_id}")
        previous = current_champion(tracking_cfg, model_name)
        if previous is not None:
            split.require_task(previous.task, f"the champion, {model_name} version {previous.version},")
        if model.dataset_version and model.dataset_version != split.version:
            logger.warning(
                "run %s trained on dataset %s; scoring it on %s", train_run_id, model.dataset_version, split.version
            )
        primary = PRIMARY_METRIC[task]
        custom = list(thresholds.custom_metrics)
        with (
            stage_run(tracking_cfg, "evaluate", parent_run_id=parent_run_id, dataset_version=split.version) as run_id,
            stage_telemetry(tracking_cfg, run_id, "evaluate") as telemetry,
        ):
            logger.info("evaluate run %s on %s", run_id, record_gpu_inventory(tracking_cfg, run_id))
            challenger = score_model(tracking_cfg, model.model_uri, model.labels, split, task, custom)
            previous_version = previous.version if previous else None
            champion = (
                score_model(tracking_cfg, previous.model_uri, previous.labels, split, task, custom)
                if previous
                else None
            )
            regression = primary_regression(task, challenger.metrics, champion.metrics if champion else None)
            decision = apply_gate(
                thresholds,
                task,
                metrics=challenger.metrics,
                champion_metrics=champion.metrics if champion else None,
                champion_version=previous_version,
            )
            promote = decision.passed and promote_on_pass

            headline = [*headline_metrics(task), *(metric.name for metric in custom)]
            version_tags = {
                **gate_tags(decision),
                TAG_EVALUATE_RUN: run_id,
                TAG_DATASET_VERSION: split.version,
                TAG_DATASET_URI: split.dataset_uri,
                **{f"{TAG_TEST_METRIC_PREFIX}{key}": f"{challenger.metrics[key]:.6f}" for key in headline
                   if key in challenger.metrics},
            }  # fmt: skip
            registered = register_version(tracking_cfg, model_name, model, version_tags)
            report = render_markdown(
                decision,
                model_name=model_name,
                model_version=registered.version,
                metrics=challenger.metrics,
                champion_metrics=champion.metrics if champion else None,
                champion_version=previous_version,
                outcome=outcome(
                    decision,
                    version=registered.version,
                    promote_on_pass=promote_on_pass,
                    champion_version=previous_version,
                ),
                task=task,
            )
            report_evaluation(
                tracking_cfg,
                run_id,
                challenger=challenger,
                champion=champion,
                regression=regression,
                decision=decision,
                tags={
                    TAG_MODEL_NAME: model_name,
                    TAG_MODEL_VERSION: registered.version,
                    TAG_TRAIN_RUN: train_run_id,
                    TAG_PREVIOUS_CHAMPION_VERSION: previous_version or "",
                    TAG_PROMOTED: str(promote).lower(),
                    TAG_TASK: task,
                },
                report=report,
            )
            report_artifacts(challenger, report, model_name=model_name, model_version=registered.version)
            # Last registry write: everything above has already succeeded.
            champion_after = move_aliases(
                tracking_cfg, model_name, registered.version, promote=promote, expected_champion=previous_version
            )
            seconds = time.perf_counter() - started
            client_for(tracking_cfg).log_metric(run_id, "stage_seconds", seconds)

    evaluation = Evaluation(
        model_name=model_name,
        model_version=registered.version,
        model_uri=registered.model_uri,
        train_run_id=train_run_id,
        evaluate_run_id=run_id,
        dataset_uri=dataset_uri,
        dataset_version=split.version,
        task=task,
        primary_metric=primary,
        metrics=challenger.metrics,
        champion_metrics=champion.metrics if champion else None,
        regression=regression,
        gate=decision,
        previous_champion_version=previous_version,
        champion_version=champion_after,
        promoted=promote,
        seconds=round(seconds, 3),
        telemetry=telemetry.as_dict(),
        custom_metrics=[metric.name for metric in custom],
    )
    emit(MODEL_EVALUATED, model_resource(model_name), evaluation.event_payload())
    if decision.passed:
        logger.info(
            "%s version %s passed the gate; champion is version %s", model_name, registered.version, champion_after
        )
    else:
        logger.warning("%s version %s failed the gate: %s", model_name, registered.version, "; ".join(decision.reasons))
    return evaluation
