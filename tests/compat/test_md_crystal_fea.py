"""compat ``MolecularDynamics`` keeps ``crystal_fea`` in the calculator's results whatever its
compile decision: a compiled potential ran with features off, so a chgnet-style observer
(``md.atoms.calc.results["crystal_fea"]`` at each step) raised KeyError in some runs (the
decision depends on timings) and not in others."""

from __future__ import annotations

import numpy as np
import pytest

import fastchgnet.md.dynamics as md_dynamics
from fastchgnet.compat import MolecularDynamics
from fastchgnet.compile.decide import CompileDecision
from fastchgnet.md.calculator import compiled_potential
from fastchgnet.model.potential import EagerPotential

EAGER_KEYS = {"energy", "free_energy", "forces", "stress", "magmoms", "crystal_fea"}


def always_compile(atoms, model, steps, stress, eager_every=None):
    """``md_compile_decision`` deciding to compile (TorchScript) and keep it, whatever the
    timings."""
    decision = CompileDecision(True, "test: compile", 0.0, 1.0, 1e9, backend="torchscript")
    options = md_dynamics.md_compile_options(steps) | {"backend": "torchscript"}
    return decision, compiled_potential(model, **options)


def observed_run(md: MolecularDynamics, steps: int) -> list[dict]:
    """The calculator's results at each step, read as a chgnet observer reads them."""
    seen: list[dict] = []
    md.dyn.attach(lambda: seen.append(dict(md.atoms.calc.results)), interval=1)
    md.run(steps)
    return seen


@pytest.mark.parametrize("compiled", [None, "torchscript"])
def test_crystal_fea_stays_in_the_results_when_compiled(
    compat_model, limno2, monkeypatch, compiled
):
    monkeypatch.setattr(md_dynamics, "md_compile_decision", always_compile)
    md = MolecularDynamics(
        limno2.copy(), model=compat_model, ensemble="nvt", starting_temperature=300,
        compiled=compiled,
    )  # fmt: skip
    seen = observed_run(md, 12)
    assert not isinstance(md.atoms.calc.potential, EagerPotential), "the run must be compiled"
    assert all(set(results) == EAGER_KEYS for results in seen)
    eager = compat_model.predict_structure(md.atoms, task="e", return_crystal_feas=True)
    np.testing.assert_allclose(seen[-1]["crystal_fea"], eager["crystal_fea"], atol=1e-4)
