"""Choose the trainer (a spec file, a saved block, or the built-in MLP) and turn it into the launcher's workload.

A custom trainer always runs under gpuflow's launcher (``python -m workloads.launcher ... -- COMMAND``), which
owns telemetry, the metrics relay, checkpoints, early stopping and the checks on exit (docs/trainers.md). An
entry point is the command ``python -m workloads.launcher.entrypoint package.module:function``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core.spec_files import looks_like_file, read_spec_file
from tasks.core.trainer_spec import (
    BUILTIN_HYPERPARAMETERS,
    TrainerSpec,
    TrainerSpecError,
    parse_trainer_text,
    trainer_spec_from_data,
)
from workloads.mlflow_params import log_new_params
from workloads.tags import TAG_TRAINER

TrainerRef = str | TrainerSpec | dict[str, Any] | None
LAUNCHER_MODULE = "workloads.launcher"
ENTRYPOINT_MODULE = "workloads.launcher.entrypoint"
BUILTIN_ENTRY_POINT = "workloads.trainer.entry:train"  # the built-in MLP, written on the SDK


def resolve_trainer(ref: TrainerRef) -> TrainerSpec:
    """The trainer a reference names: a spec file (YAML/JSON), a saved ``TrainerSpec`` block name, a mapping, or
    ``None``/empty for the built-in MLP. A relative ``working_dir`` in a file is relative to the file's folder."""
    if ref is None or isinstance(ref, TrainerSpec):
        return ref or TrainerSpec()
    if isinstance(ref, dict):
        return trainer_spec_from_data(ref)
    text = ref.strip()
    if not text:
        return TrainerSpec()
    if looks_like_file(text):
        path, content = read_spec_file(text, "trainer spec", TrainerSpecError)
        spec = parse_trainer_text(content, f"trainer spec {path}")
        if spec.working_dir and not Path(spec.working_dir).is_absolute():
            spec = spec.model_copy(update={"working_dir": str((path.parent / spec.working_dir).resolve())})
        return spec
    from blocks.trainer_spec import load_trainer_block

    return load_trainer_block(text)


def builtin_trainer(hyperparameters: dict[str, Any], spec: TrainerSpec | None = None) -> TrainerSpec:
    """The built-in MLP as the launcher runs it: the SDK entry point with these hyperparameters (declared types),
    keeping the stall timeout and stop grace of ``spec`` (a built-in spec: hyperparameters only) when given."""
    return (spec or TrainerSpec()).model_copy(
        update={
            "entry_point": BUILTIN_ENTRY_POINT,
            "hyperparameters": dict(hyperparameters),
            "hyperparameter_types": BUILTIN_HYPERPARAMETERS,
        }
    )


def trainer_command(spec: TrainerSpec) -> list[str]:
    """What the launcher starts: the spec's command, or the entry-point runner for an SDK function (the built-in
    MLP's too)."""
    if spec.command is not None:
        return list(spec.command)
    return ["python", "-m", ENTRYPOINT_MODULE, spec.entry_point or BUILTIN_ENTRY_POINT]


def launcher_args(
    spec: TrainerSpec,
    *,
    dataset_uri: str,
    training_id: str,
    device: str,
    early_stop: str,
    patience: int,
    telemetry_interval: float | None,
) -> list[str]:
    """The launcher's command line for a custom trainer (its options, ``--``, then the trainer's command)."""
    options = {
        "--dataset-uri": dataset_uri,
        "--training-id": training_id,
        "--hparams": json.dumps(spec.hyperparameters, sort_keys=True),
        "--device": device,
        "--early-stop": early_stop,
        "--patience": str(patience),
        "--stop-grace": repr(float(spec.stop_grace_seconds)),
    }
    if spec.stall_timeout_seconds is not None:
        options["--stall-timeout"] = repr(float(spec.stall_timeout_seconds))
    if telemetry_interval is not None:
        options["--telemetry-interval"] = repr(float(telemetry_interval))
    return [*(part for option in options.items() for part in option), "--", *trainer_command(spec)]


def record_trainer(tracking: Any, run_id: str, spec: TrainerSpec) -> None:
    """Name the trainer on the train run (the ``gpuflow.trainer`` tag, ``trainer`` and ``hyperparameters`` params),
    so lineage answers "what code trained this model". Params already logged (a retried run) are left."""
    from tasks.tracking.runs import client_for

    described = spec.describe()
    params = {"trainer": described}
    if spec.kind != "builtin":
        params["hyperparameters"] = json.dumps(spec.hyperparameters, sort_keys=True)
    log_new_params(client_for(tracking), run_id, params, {TAG_TRAINER: described[:5000]})
