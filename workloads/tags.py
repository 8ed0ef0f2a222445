"""The MLflow tag names gpuflow writes and reads, in one place (like MLflow's ``mlflow.utils.mlflow_tags``).

Lives in workloads/ because both sides use them: the trainer and the server (no Prefect) and the stages,
reports and lineage that read what they wrote. Import the constant; never spell a ``gpuflow.*`` tag literally.
"""

from __future__ import annotations

# every stage's run (tasks/tracking/runs.py)
TAG_STAGE = "gpuflow.stage"
TAG_FLOW_RUN = "gpuflow.prefect_flow_run_id"
TAG_PIPELINE_VERSION = "gpuflow.pipeline_version"
TAG_ENVIRONMENT = "gpuflow.environment"
TAG_DATASET_VERSION = "gpuflow.dataset_version"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: a child run's parent

# prepare
TAG_DATASET_URI = "gpuflow.dataset_uri"
TAG_CACHE_HIT = "gpuflow.dataset_cache_hit"

# train (the trainer writes the model's tags; the flow the backend's)
TAG_MODEL_URI = "gpuflow.model_uri"
TAG_LABELS = "gpuflow.labels"  # classification only: the class labels in output order, JSON
TAG_TASK = "gpuflow.task"  # "classification" or "regression"; absent means classification (models of before)
# Not a tag: a key of a logged model's MLflow metadata (``log_model(metadata=...)``), the vocabulary of each string
# input column, {column: [value, ...]}, so the server refuses a category never seen in training (docs/serving.md).
METADATA_CATEGORIES = "gpuflow.categories"
TAG_TRAINING_ID = "gpuflow.training_id"
TAG_RESUMED_FROM = "gpuflow.resumed_from_epoch"
TAG_STOP_REASON = "gpuflow.stop_reason"
TAG_COMPUTE_BACKEND = "gpuflow.compute.backend"
TAG_MODEL = "gpuflow.model"
TAG_TRAINER = "gpuflow.trainer"  # what code trained the model: the built-in MLP, an entry point, a command, an image

# evaluate and the registry
TAG_TRAIN_RUN = "gpuflow.train_run_id"
TAG_EVALUATE_RUN = "gpuflow.evaluate_run_id"
TAG_GATE_PASSED = "gpuflow.gate.passed"
TAG_GATE_REASONS = "gpuflow.gate.reasons"
TAG_TEST_METRIC_PREFIX = "gpuflow.test_"
TAG_MODEL_NAME = "gpuflow.model_name"
TAG_MODEL_VERSION = "gpuflow.model_version"
TAG_PREVIOUS_CHAMPION_VERSION = "gpuflow.previous_champion_version"
TAG_CHAMPION_VERSION = "gpuflow.champion_version"
TAG_PROMOTED = "gpuflow.promoted"

# rollout
TAG_ROLLOUT_DECISION = "gpuflow.rollout.decision"
TAG_ROLLOUT_FAILED_CHECK = "gpuflow.rollout.failed_check"
TAG_ROLLOUT_REASON = "gpuflow.rollout.reason"
TAG_ROLLOUT_BACKEND = "gpuflow.rollout.backend"

# telemetry of every stage
TAG_TELEMETRY = "gpuflow.telemetry"
TAG_TELEMETRY_MISSING = "gpuflow.telemetry.missing"

# the GPUs NVML sees where a stage runs (workloads/gpu.py)
TAG_GPU_COUNT = "gpuflow.gpu.count"
TAG_GPU_NAMES = "gpuflow.gpu.names"
TAG_GPU_SUMMARY = "gpuflow.gpu.summary"
