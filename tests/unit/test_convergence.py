"""Convergence figures and the EarlyStopper decisions, on per-epoch metrics worked out by hand."""

from __future__ import annotations

import math

import pytest

from tasks.core.errors import ConfigurationError
from tasks.reporting.convergence_figures import analyse_convergence
from workloads.convergence import EarlyStopper

ACCURACY = [0.50, 0.70, 0.80, 0.86, 0.90, 0.89, 0.90, 0.895, 0.90]
THROUGHPUT = [100, 100, 100, 100, 120, 80, 100, 100, 100]


def epochs(accuracy: list[float] = ACCURACY, **per_epoch: list[float]) -> list[dict[str, float]]:
    rows = []
    for i, acc in enumerate(accuracy):
        row = {
            "epoch": i + 1,
            "val_accuracy": acc,
            "val_loss": 1.0 - acc,
            "train_loss": 1.0 / (i + 1),
            "epoch_seconds": 12.0,
            "samples_per_second": THROUGHPUT[i % len(THROUGHPUT)],
        }
        row.update({k: v[i] for k, v in per_epoch.items()})
        rows.append(row)
    return rows


def test_best_target_and_what_it_took() -> None:
    report = analyse_convergence(epochs(), gpu_seconds=[10.0] * 9, costs=[0.1] * 9, plateau_patience=3)

    assert report.best_value == 0.90 and report.best_epoch == 5  # the first epoch at the best value
    assert report.target_value == pytest.approx(0.855)  # 95 % of 0.90
    assert report.target_epoch == 4 and report.epochs_to_target == 4  # 0.86 is the first >= 0.855
    assert report.seconds_to_target == pytest.approx(48.0)  # 4 x 12 s
    assert report.gpu_seconds_to_target == pytest.approx(40.0)
    assert report.cost_to_target == pytest.approx(0.4)
    assert report.gpu_seconds_after_best == pytest.approx(40.0)  # epochs 6-9
    assert (report.total_seconds, report.total_gpu_seconds) == pytest.approx((108.0, 90.0))
    assert report.total_cost == pytest.approx(0.9)


def test_plateau_is_patience_epochs_without_improvement() -> None:
    # After the best at epoch 5: 0.89, 0.90 (not better), 0.895 -> three epochs without improvement at epoch 8.
    assert analyse_convergence(epochs(), plateau_patience=3).plateau_epoch == 8
    assert analyse_convergence(epochs(), plateau_patience=5).plateau_epoch is None
    # min_delta 0.05: after 0.80 (epoch 3) only 0.86 (epoch 4, +0.06) counts; then 5 epochs reach at most 0.90.
    assert analyse_convergence(epochs(), plateau_patience=5, min_delta=0.05).plateau_epoch == 9


def test_throughput_stability_is_the_coefficient_of_variation() -> None:
    report = analyse_convergence(epochs())

    assert report.throughput_mean == pytest.approx(100.0)
    assert report.throughput_cv == pytest.approx(math.sqrt((20**2 + 20**2) / 9) / 100)  # 0.0943


def test_per_epoch_gpu_seconds_and_cost_may_come_with_the_epochs() -> None:
    report = analyse_convergence(epochs(gpu_seconds=[5.0] * 9, cost=[0.02] * 9))

    assert report.gpu_seconds_to_target == pytest.approx(20.0) and report.cost_to_target == pytest.approx(0.08)


def test_epochs_without_gpu_figures_had_their_time_carried_by_the_next_that_has_them() -> None:
    """The launcher attributes GPU time to steps a sampling interval apart; the sums stay whole."""
    rows = epochs()
    for row, seconds in zip(rows, [6.0, None, 10.0, None, 5.0, 5.0, 5.0, 5.0, 5.0], strict=True):
        if seconds is not None:
            row["gpu_seconds"] = seconds
    report = analyse_convergence(rows)

    assert report.target_epoch == 4  # 0.86 >= 95 % of 0.90; epoch 4's time went into epoch 5's figures
    assert report.gpu_seconds_to_target == pytest.approx(16.0)
    assert report.total_gpu_seconds == pytest.approx(41.0)


def test_figures_that_need_gpu_time_are_none_without_it() -> None:
    report = analyse_convergence(epochs())

    assert report.gpu_seconds_to_target is None and report.cost_to_target is None
    assert report.gpu_seconds_after_best is None and report.seconds_to_target == pytest.approx(48.0)


def test_a_metric_to_minimise_targets_best_over_fraction() -> None:
    rows = [{"epoch": i + 1, "val_loss": v} for i, v in enumerate([1.0, 0.5, 0.42, 0.40])]
    report = analyse_convergence(rows, metric="val_loss", mode="min")

    assert report.best_value == 0.40 and report.target_value == pytest.approx(0.40 / 0.95)  # 0.4211
    assert report.target_epoch == 3  # 0.42 <= 0.4211


def test_nan_loss_is_divergence() -> None:
    rows = epochs()
    rows[2]["train_loss"] = float("nan")
    report = analyse_convergence(rows)

    assert report.diverged and report.divergence_epoch == 3
    assert report.divergence_reason == "train_loss is nan at epoch 3"


def test_loss_rising_k_epochs_in_a_row_is_divergence() -> None:
    rows = epochs(train_loss=[1.0, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5])
    assert analyse_convergence(rows, rising_epochs=3).divergence_epoch == 5  # rises at epochs 3, 4, 5
    assert analyse_convergence(rows, rising_epochs=7).divergence_epoch == 9
    assert not analyse_convergence(epochs(), rising_epochs=3).diverged


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="3 gpu_seconds values for 9 epochs"):
        analyse_convergence(epochs(), gpu_seconds=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigurationError, match="target_fraction"):
        analyse_convergence(epochs(), target_fraction=1.5)


def test_no_epochs_gives_an_empty_report() -> None:
    report = analyse_convergence([])

    assert report.epochs == 0 and report.best_value is None and report.target_epoch is None
    assert report.throughput_cv is None and not report.diverged


def test_report_metrics_are_floats_named_for_mlflow() -> None:
    metrics = analyse_convergence(epochs(), plateau_patience=3).as_metrics()

    assert metrics["convergence.best_value"] == 0.90 and metrics["convergence.plateau_epoch"] == 8.0
    assert metrics["convergence.diverged"] == 0.0 and "convergence.cost_to_target" not in metrics


# -------------------------------------------------------------------------------------------- EarlyStopper


def test_early_stopper_stops_on_plateau_and_keeps_saying_so() -> None:
    stopper = EarlyStopper("val_accuracy", patience=2)
    decisions = [stopper.update({"val_accuracy": v}) for v in (0.5, 0.6, 0.6, 0.55, 0.9)]

    assert [d.stop for d in decisions] == [False, False, False, True, True]
    assert decisions[3].kind == "plateau" and decisions[3].epoch == 4
    assert decisions[3].reason == "val_accuracy has not improved for 2 epochs (best 0.6 at epoch 2)"
    assert decisions[4] == decisions[3]  # a later improvement does not undo the stop


def test_early_stopper_stops_on_divergence_and_min_mode_works() -> None:
    stopper = EarlyStopper("val_loss", "min", patience=None, rising_epochs=2, loss_key="val_loss")
    losses = [1.0, 0.7, 0.8, 0.9]
    decisions = [stopper.update({"epoch": i + 1, "val_loss": v}) for i, v in enumerate(losses)]

    assert [d.stop for d in decisions] == [False, False, False, True]
    assert decisions[3].kind == "divergence" and decisions[3].best_value == 0.7 and decisions[3].best_epoch == 2
    assert decisions[3].reason == "val_loss rose 2 epochs in a row (to 0.9 at epoch 4)"


def test_early_stopper_with_both_checks_off_never_stops_on_them() -> None:
    stopper = EarlyStopper(patience=None, rising_epochs=None)
    for i in range(20):
        assert not stopper.update({"val_accuracy": 0.5, "train_loss": float(i)}).stop
    assert stopper.update({"train_loss": float("inf")}).kind == "divergence"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "up"}, "mode must be 'max' or 'min'"),
        ({"patience": 0}, "patience must be >= 1"),
        ({"rising_epochs": 0}, "rising_epochs must be >= 1"),
        ({"min_delta": -0.1}, "min_delta must be >= 0"),
    ],
)
def test_early_stopper_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EarlyStopper(**kwargs)  # type: ignore[arg-type]
