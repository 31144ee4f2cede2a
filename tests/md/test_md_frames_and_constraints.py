"""MD keeps fixed atoms fixed under every thermostat (Langevin's FixCom used to shift them),
writes the run's last step when it ends between log intervals, gives every written frame its
stress from that step's own force call, and refuses a thermostat for NVE."""

from __future__ import annotations

import numpy as np
import pytest
from ase.constraints import FixAtoms
from ase.io import read

from fastchgnet.md.calculator import Calculator
from fastchgnet.md.dynamics import run_md
from tests.md.conftest import CountingPotential


def crystal_with_two_fixed_atoms(small_crystals):
    atoms = next(a for a in small_crystals if len(a) > 3).copy()
    atoms.set_constraint(FixAtoms(indices=[0, 1]))
    return atoms


@pytest.mark.parametrize("thermostat", ["langevin", "bussi"])
def test_fixed_atoms_keep_their_positions_and_zero_momenta(
    model, small_crystals, tmp_path, thermostat
):
    """Langevin added ASE's FixCom, which moves every atom, fixed ones too (0.007 Å in 200
    steps of LiMnO2). Fixed atoms hold the frame: no FixCom, and the start's temperature
    counts 3 degrees of freedom per free atom."""
    atoms = crystal_with_two_fixed_atoms(small_crystals)
    traj = tmp_path / "md.extxyz"
    final = run_md(
        atoms, model, thermostat=thermostat, steps=6, loginterval=2, trajectory=traj,
        progress=False, seed=1, compiled=False, starting_temperature=300.0,
    )  # fmt: skip
    frames = read(traj, index=":")
    for frame, start in [(final, atoms)] + [(frame, frames[0]) for frame in frames]:
        np.testing.assert_array_equal(frame.positions[:2], start.positions[:2])
        np.testing.assert_array_equal(frame.get_momenta()[:2], 0.0)
    assert final.get_number_of_degrees_of_freedom() == 3 * (len(atoms) - 2)
    start = run_md(atoms, model, thermostat=thermostat, steps=0, progress=False, seed=1,
                   compiled=False, starting_temperature=300.0)  # fmt: skip
    assert start.get_temperature() == pytest.approx(300.0, rel=1e-12)


def test_a_run_ending_between_log_intervals_writes_its_last_step(model, small_crystals, tmp_path):
    """25 steps every 10 wrote steps 0, 10, 20: a restart from the last frame went back 5."""
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.log"
    final = run_md(
        small_crystals[1], model, steps=5, loginterval=2, trajectory=traj, logfile=log,
        progress=False, seed=0, compiled=False,
    )  # fmt: skip
    frames = read(traj, index=":")
    assert len(frames) == 4  # steps 0, 2, 4 and the last, 5
    np.testing.assert_allclose(frames[-1].positions, final.positions, atol=1e-6)
    times = [float(line.split()[0]) for line in log.read_text().splitlines()[1:]]
    assert times == pytest.approx([0.0, 0.004, 0.008, 0.010])


def test_every_written_frame_has_its_stress_at_no_extra_model_call(model, small_crystals, tmp_path):
    """NVT frames had no stress (the reference's all do); the force calls of the written
    steps now compute it, and only those."""
    counted = CountingPotential(model)
    traj = tmp_path / "md.extxyz"
    run_md(
        small_crystals[1], counted, steps=5, loginterval=2, trajectory=traj, progress=False,
        seed=0, compiled=False,
    )  # fmt: skip
    frames = read(traj, index=":")
    assert len(counted.calls) == 5 + 1
    assert [call["stress"] for call in counted.calls] == [True, False, True, False, True, True]
    for frame in frames:
        again = frame.copy()
        again.calc = Calculator(model)
        np.testing.assert_allclose(frame.get_stress(), again.get_stress(), atol=1e-5)


def test_nve_refuses_a_thermostat_and_runs_by_default(model, small_crystals):
    """run_md(ensemble="nve", thermostat="langevin") ran plain NVE silently."""
    counted = CountingPotential(model)
    with pytest.raises(ValueError, match="'langevin': nve runs without a thermostat"):
        run_md(small_crystals[0], counted, ensemble="nve", thermostat="langevin", steps=1)
    assert counted.calls == []
    run_md(small_crystals[0], counted, ensemble="nve", steps=1, progress=False, compiled=False)
    assert len(counted.calls) == 2


def test_npt_nose_hoover_refusal_names_the_integrator_used(model, small_crystals):
    atoms = crystal_with_two_fixed_atoms(small_crystals)
    with pytest.raises(ValueError, match=r"\(ASE's MTKNPT\) cannot keep atoms fixed"):
        run_md(atoms, model, ensemble="npt", thermostat="nose-hoover", steps=1, progress=False)


def test_the_compile_decision_prices_written_frames_by_capture(
    model, small_crystals, tmp_path, monkeypatch
):
    """A written frame's step runs the eager model (its stress) under inductor's padded
    capture, so that capture saves nothing there: its fraction over the run counts one step in
    ``loginterval`` at eager's cost. TorchScript runs those frames on its own stress graph, so
    its pricing does not change with a trajectory."""
    import fastchgnet.compile.decide as decide

    priced: list[tuple[int, dict[str, float]]] = []

    def choose_capture(calls, eager_seconds, device, price, **kwargs):
        priced.append((calls, {b: price(b)[0] for b in ("inductor", "torchscript")}))
        return decide.CompileDecision(False, "compile off (test)", 0.0, 0.0, 0.01), None

    monkeypatch.setattr(decide, "choose_capture", choose_capture)
    monkeypatch.setattr(decide, "compiled_fraction", lambda *args: 0.6)
    monkeypatch.setattr(decide, "script_fraction", lambda *args: 0.7)
    atoms = next(a for a in small_crystals if len(a) > 3).copy()
    run_md(atoms, model, steps=400, loginterval=10, trajectory=tmp_path / "t.extxyz",
           progress=False, temperature=300, thermostat="berendsen")  # fmt: skip
    run_md(atoms, model, steps=400, progress=False, temperature=300, thermostat="berendsen")
    (written_calls, written), (plain_calls, plain) = priced
    assert written_calls == plain_calls == 350  # 400 less 50 eager first, either way
    assert plain == pytest.approx({"inductor": 0.6, "torchscript": 0.7})
    # inductor: nine steps in ten save 0.4 of a call, the tenth nothing
    assert written == pytest.approx({"inductor": 1 - 0.4 * 0.9, "torchscript": 0.7})
