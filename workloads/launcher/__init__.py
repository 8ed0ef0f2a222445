"""The trainer launcher: runs any trainer command under the ``gpuflow-trainer/1`` contract (docs/trainers.md).

::

    python -m workloads.launcher --dataset-uri URI --training-id ID [--hparams JSON] [--checkpoint-root URI]
        [--device auto|cpu|cuda] [--early-stop off|plateau|divergence|both] [--patience 5]
        [--stall-timeout SECONDS] [--stop-grace SECONDS] [--telemetry-interval SECONDS] -- COMMAND [ARGS...]

It owns what every trainer needs, so a trainer needs none of it: the dataset as a local folder, the checkpoint
folder restored from and mirrored to the store, GPU telemetry with per-step attribution, the trainer's metrics
relayed to MLflow (batched, each step once), early stopping by a stop file, and on exit 0 a check of the
contract's outputs. Environment: ``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID`` (required, as for the built-in
trainer), ``GPUFLOW_STORE_URI`` (the default checkpoint root), ``AWS_*`` for S3 stores.

Exit codes: the trainer's own (a signal N as 128+N), or the launcher's: 1 (the trainer stalled; MLflow or the
store failed), 2 (bad options, a command that does not exist, a contract point missed on exit 0), 3 (the
dataset is missing or corrupt), 130 (interrupted before the trainer started). No Prefect import: it runs in pods.
"""
