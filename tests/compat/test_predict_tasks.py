"""compat ``predict_structure``'s ``task`` decides what is computed, not only what is returned:
"e" and "em" run the forward pass alone (no backward for forces or stress), with the energies
and magnetic moments of "efsm"."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def forward_calls(compat_model, monkeypatch):
    """The keyword arguments of every ``CHGNet.forward`` call in the test."""
    cls = type(compat_model)
    original = cls.forward
    calls = []

    def spy(self, batch, **kwargs):
        calls.append(kwargs)
        return original(self, batch, **kwargs)

    monkeypatch.setattr(cls, "forward", spy)
    return calls


def test_energy_only_task_runs_the_forward_alone_with_the_efsm_energy(
    compat_model, limno2, forward_calls
):
    full = compat_model.predict_structure(limno2, task="efsm")
    assert forward_calls[-1]["compute_forces"]
    assert forward_calls[-1]["compute_stress"]
    energy_only = compat_model.predict_structure(limno2, task="e")
    assert sorted(energy_only) == ["e"]
    assert float(energy_only["e"]) == pytest.approx(float(full["e"]), abs=1e-6)
    assert forward_calls[-1]["compute_forces"] is False
    assert forward_calls[-1]["compute_stress"] is False


def test_energy_and_magmom_task_computes_neither_forces_nor_stress(
    compat_model, reference_structures, forward_calls
):
    full = compat_model.predict_structure(reference_structures, task="efsm", batch_size=1)
    forward_calls.clear()
    got = compat_model.predict_structure(reference_structures, task="em", batch_size=1)
    assert [sorted(p) for p in got] == [["e", "m"], ["e", "m"]]
    assert len(forward_calls) == 2
    assert not any(c["compute_forces"] or c["compute_stress"] for c in forward_calls)
    for ours, expected in zip(got, full, strict=True):
        assert float(ours["e"]) == pytest.approx(float(expected["e"]), abs=1e-6)
        np.testing.assert_allclose(ours["m"], expected["m"], atol=1e-6)


def test_energy_and_forces_task_computes_forces_without_stress(compat_model, limno2, forward_calls):
    got = compat_model.predict_structure(limno2, task="ef")
    assert sorted(got) == ["e", "f"]
    assert forward_calls[-1]["compute_forces"] is True
    assert forward_calls[-1]["compute_stress"] is False
