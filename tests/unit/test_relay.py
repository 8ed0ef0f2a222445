"""The metric relay against a real MLflow store on SQLite: batches sent in the background, in order, each once."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from workloads.launcher.relay import MAX_BATCH, MetricRelay, run_history


def new_run(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("relay", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, client.create_run(experiment).info.run_id


def test_full_batches_go_out_while_points_arrive_and_flush_stores_every_step_once(tmp_path: Path) -> None:
    client, run_id = new_run(tmp_path)
    relay = MetricRelay(client, run_id, run_history(client, run_id))
    steps = 260  # 2,600 points: two full batches on the way, the rest at flush
    for step in range(1, steps + 1):
        relay.add(step, {f"m{i}": step + i / 10 for i in range(10)})
    relay.flush()
    assert (relay.sent, relay.batches, relay.skipped) == (steps * 10, 3, 0)
    for i in range(10):
        history = client.get_metric_history(run_id, f"m{i}")
        assert sorted(m.step for m in history) == list(range(1, steps + 1))
        assert all(m.value == m.step + i / 10 for m in history)
    assert client.get_run(run_id).data.metrics["m3"] == steps + 0.3  # the latest step is the run's figure

    again = MetricRelay(client, run_id, run_history(client, run_id))  # a restarted launcher skips it all
    for step in range(1, steps + 1):
        again.add(step, {f"m{i}": -1.0 for i in range(10)})
    again.flush()
    assert (again.sent, again.skipped) == (0, steps * 10)


def test_a_batch_that_mlflow_refuses_is_raised_by_the_next_flush(tmp_path: Path) -> None:
    client, run_id = new_run(tmp_path)
    client.set_terminated(run_id)
    client.delete_run(run_id)  # a deleted run takes no metrics
    relay = MetricRelay(client, run_id, {})
    for step in range(1, MAX_BATCH // 10 + 1):
        relay.add(step, {f"m{i}": 1.0 for i in range(10)})  # one full batch, sent in the background
    with pytest.raises(MlflowException, match=run_id):
        relay.flush()
    assert relay.sent == 0


def test_points_arriving_steadily_are_sent_once_the_oldest_has_waited_batch_seconds(tmp_path: Path) -> None:
    client, run_id = new_run(tmp_path)
    now = [0.0]
    relay = MetricRelay(client, run_id, {}, batch_seconds=0.5, clock=lambda: now[0])
    for step in range(1, 6):  # a point every 0.2 s: the first has waited 0.8 s by the fifth
        relay.add(step, {"loss": 1.0 / step})
        now[0] += 0.2
    assert relay.due(), "a batch is due batch_seconds after its oldest point, however often points arrive"
    relay.flush()
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5]
    assert not relay.due()
