"""The trainer's workload spec: the same command line on every backend, credentials only as secrets."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from blocks.data_store import DataStore
from blocks.mlflow_tracking import MLflowTracking
from tasks.core.workload import WorkloadSpec
from tasks.training.trainer_job import trainer_workload
from workloads.launcher.config import parse_config as launcher_config
from workloads.trainer.config import hyperparameters


def make_spec(**extra: Any) -> WorkloadSpec:
    store = DataStore(
        root_uri="s3://bucket/gpuflow",
        s3_endpoint_url="http://minio:9000",
        aws_access_key_id=SecretStr("AKIA-test"),
        aws_secret_access_key=SecretStr("very-secret"),
    )
    return trainer_workload(
        dataset_uri="s3://bucket/gpuflow/datasets/digits/abc",
        training_id="train-1",
        epochs=7,
        batch_size=32,
        learning_rate=0.003,
        hidden_size=96,
        seed=5,
        device="auto",
        run_id="run-123",
        tracking=MLflowTracking(tracking_uri="http://mlflow:5000"),
        store=store,
        model_name="digits",
        **extra,
    )


def test_credentials_travel_only_as_secret_env_and_the_endpoint_as_plain_config() -> None:
    spec = make_spec()
    assert spec.env == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_RUN_ID": "run-123",
        "GPUFLOW_STORE_URI": "s3://bucket/gpuflow",
        "AWS_ENDPOINT_URL_S3": "http://minio:9000",
    }
    assert spec.secret_env == {"AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": "very-secret"}
    assert "very-secret" not in repr(spec) and "very-secret" not in " ".join(spec.args)


def test_the_launcher_accepts_the_command_line_the_flow_builds_for_the_built_in_mlp_on_the_sdk() -> None:
    spec = make_spec()
    assert spec.module == "workloads.launcher"
    config = launcher_config(spec.args, {**spec.env, **spec.secret_env})
    assert config.command == ("python", "-m", "workloads.launcher.entrypoint", "workloads.trainer.entry:train")
    assert config.hparams == {"epochs": 7, "batch_size": 32, "learning_rate": 0.003, "hidden_size": 96, "seed": 5}
    assert hyperparameters(config.hparams).epochs == 7  # what the built-in SDK trainer reads from them
    assert config.checkpoint_uri == "s3://bucket/gpuflow/checkpoints/train-1"
    assert config.run_id == "run-123"


def test_the_training_job_is_labelled_with_pipeline_run_stage_dataset_and_model_for_cost_allocation() -> None:
    from tasks.kube.manifests import JobSettings, PodSettings, training_manifests

    spec = make_spec(dataset_version="abc123", pipeline_run="run-999")
    (job,) = training_manifests(spec, JobSettings(pod=PodSettings(image="reg/gpuflow:1", secret_name="store")))
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["gpuflow.io/pipeline-run"] == "run-999"
        assert labels["gpuflow.io/stage"] == "train"
        assert labels["gpuflow.io/dataset-version"] == "abc123"
        assert labels["gpuflow.io/model"] == "digits"
        assert labels["app.kubernetes.io/component"] == "trainer"
