"""Plots: parity panels for all four targets, the learning curve from a run's CSV files."""

from __future__ import annotations

import numpy as np
import pytest

from fastchgnet.train.metrics import REPORTED, MetricSums, append_csv
from fastchgnet.train.plots import fractional_epochs, learning_curve_plot, parity_plot
from tests.model.test_loss import _batch


def test_parity_points_are_kept_for_every_labelled_target(tmp_path) -> None:
    prediction, labels = _batch()
    labels.magmoms_mask[:] = True
    sums = MetricSums()
    sums.add(prediction, labels)
    for target in REPORTED:
        predicted, label = sums.parity_points(target)
        assert predicted.numel() == label.numel() > 0, target
    _stress, label = sums.parity_points("stress")
    expected = labels.stress[labels.stress_mask].reshape(-1).double()
    assert np.allclose(label.numpy(), expected.numpy())
    path = parity_plot(sums, tmp_path / "parity.png", "all four")
    assert path is not None
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_fractional_epochs_place_logged_steps_inside_their_epoch() -> None:
    steps = np.array([5, 10, 15, 20])
    epochs = np.array([1, 1, 2, 2])
    x = fractional_epochs(steps, epochs, {1: 10, 2: 20})
    assert np.allclose(x, [0.5, 1.0, 1.5, 2.0])
    assert np.allclose(fractional_epochs(steps[:1], epochs[:1], {}), [1.0])  # no val rows


def test_learning_curve_is_drawn_from_the_run_csv_files(tmp_path) -> None:
    assert learning_curve_plot(tmp_path, tmp_path / "curve.png") is None  # nothing to draw
    for step in range(1, 21, 5):
        row = {"global_step": step, "epoch": 1 + (step > 10), "loss": 1.0 / step, "lr": 1e-3}
        append_csv(tmp_path / "train_log.csv", row)
    for epoch in (1, 2):
        row = {"epoch": epoch, "split": "val", "global_step": 10 * epoch}
        for target in REPORTED:
            row |= {f"{target}_mae": 10.0 / epoch, f"{target}_r2": 0.5 * epoch}
        append_csv(tmp_path / "metrics.csv", row)
    path = learning_curve_plot(tmp_path, tmp_path / "curve.png")
    assert path is not None
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_learning_curves_epoch_mean_weights_each_row_by_its_finite_steps() -> None:
    """Each train_log row is the mean over the finite steps since the row before: the epoch
    mean weights them so (an unweighted mean of rows was not the printed epoch loss)."""
    from fastchgnet.train.plots import epoch_means

    rows = [  # epoch 1: 8 steps at 1.0 and 2 at 4.0; epoch 2: 1 finite of 2 at 3.0, 5 at 1.0
        {"global_step": "8", "epoch": "1", "loss": "1.0", "skipped": "0"},
        {"global_step": "10", "epoch": "1", "loss": "4.0", "skipped": "0"},
        {"global_step": "12", "epoch": "2", "loss": "3.0", "skipped": "1"},
        {"global_step": "13", "epoch": "2", "loss": "nan", "skipped": "1"},
        {"global_step": "18", "epoch": "2", "loss": "1.0", "skipped": "0"},
    ]
    assert epoch_means(rows) == ([1, 2], [pytest.approx(1.6), pytest.approx(8 / 6)])
