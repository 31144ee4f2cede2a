"""CompiledPotential: compiled calculator, MD and relaxation equal eager; one graph per run;
a structure that outgrows its capacity compiles exactly once more.

Fast tests compile with "aot_eager" (the same traced graph, no code generation) on the small
float64 model of tests/compile/conftest.py, where compiled and eager agree to ~1e-12; the
inductor test on the reference weights (float32) is marked slow.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.capacity import Counts, fits
from fastchgnet.data.capacity import with_headroom as capacity_with_headroom
from fastchgnet.data.graph import build_graph
from fastchgnet.data.padding import collate_padded
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md.calculator import Calculator, as_atoms, evaluate_graphs
from fastchgnet.md.dynamics import make_integrator
from fastchgnet.md.relax import relax
from tests.compile.conftest import small_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROPERTIES = ("energy", "forces", "stress", "magmoms")


@pytest.fixture(scope="module")
def model64():
    return small_model("conservative", torch.float64).eval()


@pytest.fixture(scope="module")
def crystals():
    """Three varied crystals (1, 8 and 12 atoms; the last has bond-graph bonds), as ASE Atoms."""
    return [as_atoms(s) for s in varied_structures(3, seed=11, max_atoms=8)]


def ase_properties(calc: Calculator, atoms) -> dict[str, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    return {
        "energy": np.asarray(atoms.get_potential_energy()),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(),
        "magmoms": atoms.get_magnetic_moments(),
    }


def test_capacity_has_headroom_and_grows_from_the_old_one():
    counts = Counts(structures=1, atoms=9, short_bonds=40, long_bonds=300, angles=100)
    capacity = capacity_with_headroom(counts, headroom=0.1, round_to=32)
    assert (capacity.structures, capacity.atoms) == (1, 10)  # 9 atoms and the padding atom
    assert capacity.short_bonds == 64
    assert capacity.bonds == 64 + 352
    assert capacity.angles == 128
    assert fits(capacity, counts)
    assert fits(capacity, Counts(1, 9, 60, 350, 111))
    assert not fits(capacity, Counts(1, 9, 65, 300, 100))
    assert not fits(capacity, Counts(1, 9, 40, 353, 100))
    assert not fits(capacity, Counts(1, 10, 40, 300, 100))
    assert not fits(capacity, Counts(2, 9, 40, 300, 100))
    assert not fits(capacity, Counts(1, 9, 64, 300, 100))  # padding angles need a short bond
    grown = capacity_with_headroom(Counts(1, 9, 70, 10, 100), 0.1, 32, at_least=capacity)
    assert grown.short_bonds == 96
    assert grown.bonds - grown.short_bonds == 352
    assert grown.angles == 128


def test_padded_capacity_counts_long_bonds_apart_from_short_ones(crystals):
    graph = build_graph(crystals[0])
    counts = Counts.of([graph])
    capacity = capacity_with_headroom(counts, 0.1, 32)
    batch, _ = collate_padded([graph], capacity)
    assert batch.n_short_bonds == capacity.short_bonds
    assert counts.long_bonds == graph.n_bonds - graph.n_short_bonds > 0


def test_compiled_calculator_equals_eager_calculator(model64, crystals):
    potential = CompiledPotential(model64, backend="aot_eager")
    for atoms in crystals:
        compiled = ase_properties(Calculator(potential, always_stress=True), atoms)
        eager = ase_properties(Calculator(model64, always_stress=True), atoms)
        for name in PROPERTIES:
            np.testing.assert_allclose(compiled[name], eager[name], rtol=1e-10, atol=1e-10)
    assert potential.captured[True, False].stats.recompiles == 0
    assert potential.graphs_built == len(potential.capacities) <= len(crystals)


def test_md_through_the_compiled_potential_builds_one_graph(model64, crystals):
    potential = CompiledPotential(model64, backend="aot_eager")
    trajectories = []
    for calc in (Calculator(model64), Calculator(potential)):
        atoms = crystals[2].copy()
        atoms.set_momenta(np.random.default_rng(0).normal(scale=0.3, size=(len(atoms), 3)))
        atoms.calc = calc
        dyn = make_integrator(atoms, "nvt", "berendsen", temperature=300, timestep=2.0)
        energies: list[float] = []
        dyn.attach(lambda a=atoms, e=energies: e.append(a.get_potential_energy()), interval=1)
        dyn.run(20)
        trajectories.append((atoms.positions.copy(), np.array(energies)))
    (eager_positions, eager_energies), (positions, energies) = trajectories
    assert potential.graphs_built == 1  # without stress: MD with a thermostat never asks
    assert potential.captured[False, False].stats.recompiles == 0
    assert potential.captured[True, False].stats.graphs == 0
    assert np.ptp(energies) > 1e-4  # the structure moved
    np.testing.assert_allclose(positions, eager_positions, atol=1e-9)
    np.testing.assert_allclose(energies, eager_energies, rtol=1e-9, atol=1e-9)


def test_outgrown_capacity_compiles_exactly_once_more(model64, crystals, caplog):
    potential = CompiledPotential(model64, backend="aot_eager", headroom=0.05, round_to=8)
    atoms = crystals[2]
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.9, scale_atoms=True)  # more bonds and angles than 5 %
    graphs = [build_graph(a, name=n) for a, n in ((atoms, "loose"), (squeezed, "squeezed"))]
    evaluate_graphs(potential, graphs[:1], stress=False)
    assert potential.graphs_built == 1
    with caplog.at_level("INFO", logger="fastchgnet.compile"):
        compiled = evaluate_graphs(potential, graphs[1:], stress=False)[0]
    assert potential.graphs_built == 2
    assert "squeezed outgrew capacity" in caplog.text
    eager = evaluate_graphs(model64, graphs[1:], stress=False)[0]
    for name in ("energy", "forces", "magmoms"):
        np.testing.assert_allclose(compiled[name], eager[name], rtol=1e-10, atol=1e-10)
    evaluate_graphs(potential, graphs[:1], stress=False)  # the loose one still fits
    assert potential.graphs_built == 2


def test_fortran_ordered_coordinates_do_not_recompile(model64, crystals):
    # ASE's scaled positions come in Fortran order; numpy concatenates these (after a 1-atom
    # structure, both C and F ordered) into a Fortran-ordered (n, 3) array
    graphs = [build_graph(crystals[0]), build_graph(crystals[2])]
    fortran = [replace(g, frac_coords=np.asfortranarray(g.frac_coords)) for g in graphs]
    ordered = [replace(g, frac_coords=np.ascontiguousarray(g.frac_coords)) for g in graphs]
    potential = CompiledPotential(model64, backend="aot_eager")
    first = evaluate_graphs(potential, fortran, stress=False)
    second = evaluate_graphs(potential, ordered, stress=False)
    assert potential.captured[False, False].stats.recompiles == 0
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["forces"], b["forces"])


def test_batched_relax_with_compiled_potential_matches_eager(model64):
    structures = varied_structures(4, seed=3, max_atoms=6)
    # the random model shrinks these cells, angles grow by ~70 %: headroom for them all
    potential = CompiledPotential(model64, backend="aot_eager", headroom=1.0)
    eager = relax(structures, model64, steps=15, fmax=0.05)
    compiled = relax(structures, potential, steps=15, fmax=0.05)
    np.testing.assert_allclose(
        [r.energy for r in compiled], [r.energy for r in eager], rtol=1e-9, atol=1e-9
    )
    assert [r.steps for r in compiled] == [r.steps for r in eager]
    assert len({r.steps for r in eager}) > 1  # structures dropped out at different steps
    assert potential.graphs_built == 1  # one padded shape: converged ones leave empty slots
    assert potential.captured[True, False].stats.recompiles == 0
    assert potential.capacities[0].structures == len(structures)


@pytest.mark.slow
def test_inductor_calculator_matches_eager_and_a_warm_start_compiles_nothing(model, crystals):
    """Compiled ahead of time into the on-disk store (this session's temporary one), the
    calculator equals eager; a new CompiledPotential, as a new process would make, loads both
    shapes from the store, compiles nothing and gives the same results."""
    calc = Calculator(model, compiled=True, always_stress=True)
    first = []
    for atoms in crystals[:2]:
        first.append(ase_properties(calc, atoms))
        eager = ase_properties(Calculator(model, always_stress=True), atoms)
        np.testing.assert_allclose(first[-1]["energy"], eager["energy"], rtol=1e-5)
        np.testing.assert_allclose(first[-1]["forces"], eager["forces"], atol=1e-4)
        np.testing.assert_allclose(first[-1]["stress"], eager["stress"], atol=1e-5)
        np.testing.assert_allclose(first[-1]["magmoms"], eager["magmoms"], atol=1e-4)
    assert calc.potential.store is not None
    assert calc.potential.store.builds == 2  # two shapes: 1 and 8 atoms

    warm = Calculator(model, compiled=True, always_stress=True)
    for atoms, before in zip(crystals[:2], first, strict=True):
        again = ase_properties(warm, atoms)
        for key, value in before.items():
            np.testing.assert_array_equal(again[key], value, err_msg=key)
    assert warm.potential.store.builds == 0
    assert (warm.potential.graphs_built, warm.potential.graphs_loaded) == (0, 2)
    assert warm.potential.compile_seconds == 0.0


def test_compiled_site_energies_and_features_equal_eager(model64, crystals):
    from fastchgnet.model.potential import predict_structures

    potential = CompiledPotential(model64, backend="aot_eager")
    compiled = predict_structures(potential, crystals[:2], features=True)
    eager = predict_structures(model64, crystals[:2], features=True)
    for a, b in zip(eager, compiled, strict=True):
        assert set(a) == set(b) == {"e", "f", "s", "m", "site_energies", "atom_fea", "crystal_fea"}
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-10)
        assert b["site_energies"].sum() / len(b["f"]) == pytest.approx(float(b["e"]), rel=1e-9)


@pytest.mark.parametrize("copy", [False, True])
def test_real_part_keeps_the_real_rows_and_copies_them_once_per_dtype(copy, monkeypatch):
    """``real_part`` as a GPU runs it (``copy``: the outputs are CUDA graphs' buffers, which
    the next call overwrites), through the CPU: one join per dtype, new memory, and the
    split takes it to the host without joining again."""
    from types import SimpleNamespace

    from fastchgnet.compile.potential import real_part
    from fastchgnet.data import batch
    from fastchgnet.model.chgnet import Prediction

    rng = torch.Generator().manual_seed(0)
    padded = Prediction(
        energy=torch.randn(3, generator=rng),
        total_energy=torch.randn(3, generator=rng),
        forces=torch.randn(6, 3, generator=rng),
        stress=torch.randn(3, 3, 3, generator=rng),
        magmoms=torch.randn(6, generator=rng),
        site_energies=torch.randn(6, generator=rng),
        atom_features=torch.randn(6, 4, generator=rng),
        crystal_features=torch.randn(3, 4, generator=rng),
    )
    graphs = [SimpleNamespace(n_atoms=1), SimpleNamespace(n_atoms=4)]  # a padding slot after
    expected = {k: v.clone() for k, v in vars(padded).items()}
    joins = []
    cat = torch.cat
    monkeypatch.setattr(batch.torch, "cat", lambda ts: joins.append(len(ts)) or cat(ts))
    real = real_part(padded, graphs, stress=False, features=True, copy=copy)
    assert joins == ([7] if copy else [])  # the seven fields kept, float32: one join
    assert real.stress is None
    for name, value in vars(padded).items():
        value.fill_(-1.0)  # the next call
        kept = getattr(real, name)
        if name == "stress":
            continue
        n = 5 if name in Prediction.PER_ATOM else 2
        if copy:
            torch.testing.assert_close(kept, expected[name][:n], rtol=0, atol=0)
        else:
            assert kept.data_ptr() == value.data_ptr()
            assert kept.shape[0] == n
    if copy:
        parts = real.split([1, 4])
        assert joins == [7]
        np.testing.assert_array_equal(parts[1]["forces"], expected["forces"][1:5].numpy())
        np.testing.assert_array_equal(parts[0]["energy"], expected["energy"][0].numpy())
    no_features = real_part(padded, graphs, stress=True, features=False, copy=False)
    assert no_features.atom_features is None
    assert no_features.crystal_features is None
    assert no_features.stress.shape == (2, 3, 3)
    no_forces = real_part(padded, graphs, stress=False, features=False, copy=False, forces=False)
    assert no_forces.forces is None
    assert no_forces.stress is None
    assert no_forces.energy.shape == (2,)
