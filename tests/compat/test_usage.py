"""The reference README's usage blocks, written again with one changed import line
(``from fastchgnet.compat import ...``), give the reference's numbers (parity tolerances of
tests/model/test_parity.py; features and site energies: ``EXTRA``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.io.trajectory import Trajectory
from pymatgen.io.ase import AseAtomsAdaptor

from tests.model.test_parity import TOLERANCE

#: site energies eV; atom and crystal features (unitless, entries of order 1-10); observed
#: float32 differences are 2e-6, 4e-5 and 5e-6 on LiMnO2
EXTRA = {"site_energies": 1e-4, "atom_fea": 5e-4, "crystal_fea": 5e-4}


def _reference(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


def test_predict_block_gives_reference_numbers(chgnet_ref, reference_structures):
    from fastchgnet.compat import CHGNet

    chgnet = CHGNet.load()
    assert chgnet.version == "0.3.0"
    reference = _reference(lambda: chgnet_ref.CHGNet.load(use_device="cpu", verbose=False))
    options = {"return_site_energies": True, "return_atom_feas": True, "return_crystal_feas": True}
    for structure in reference_structures:
        prediction = chgnet.predict_structure(structure, **options)
        expected = _reference(lambda s=structure: reference.predict_structure(s, **options))
        assert sorted(prediction) == sorted(expected)
        for key, limit in {**TOLERANCE, **EXTRA}.items():
            assert np.shape(prediction[key]) == np.shape(expected[key]), key
            worst = float(np.abs(prediction[key] - expected[key]).max())
            assert worst <= limit, f"{structure.formula}: |Δ{key}| = {worst:.3g} > {limit}"
        total = prediction["site_energies"].sum()
        assert total == pytest.approx(prediction["e"] * len(structure), abs=1e-4)


def test_predict_task_and_batch_keys_follow_reference(compat_model, reference_structures):
    predictions = compat_model.predict_structure(reference_structures, task="ef", batch_size=1)
    assert [sorted(p) for p in predictions] == [["e", "f"], ["e", "f"]]
    graph = compat_model.graph_converter(reference_structures[0])
    assert sorted(compat_model.predict_graph(graph, task="em")) == ["e", "m"]
    with pytest.raises(ValueError, match="Invalid task='fs'"):
        compat_model.predict_structure(reference_structures[0], task="fs")


def test_calculator_site_energies_and_stress_weight_match_reference(
    chgnet_ref, compat_model, limno2
):
    from fastchgnet.compat import CHGNetCalculator

    reference = _reference(lambda: chgnet_ref.CHGNet.load(use_device="cpu", verbose=False))
    ref_calc = _reference(
        lambda: chgnet_ref.CHGNetCalculator(
            reference, use_device="cpu", stress_weight=0.5, return_site_energies=True
        )
    )
    calc = CHGNetCalculator(
        compat_model, use_device="cpu", stress_weight=0.5, return_site_energies=True
    )
    ours, theirs = AseAtomsAdaptor.get_atoms(limno2), AseAtomsAdaptor.get_atoms(limno2)
    ours.calc, theirs.calc = calc, ref_calc
    n = len(limno2)
    assert ours.get_potential_energy() == pytest.approx(
        theirs.get_potential_energy(), abs=TOLERANCE["e"] * n
    )
    site = np.abs(ours.get_potential_energies() - theirs.get_potential_energies()).max()
    assert site <= EXTRA["site_energies"]
    assert np.abs(ours.get_stress() - theirs.get_stress()).max() <= TOLERANCE["s"] * 0.5
    assert np.abs(ours.get_forces() - theirs.get_forces()).max() <= TOLERANCE["f"]
    assert ours.calc.results["crystal_fea"].shape == (64,)
    # a script reading the results reads the reference's (3, 3) tensor (it read a Voigt 6)
    assert ours.calc.results["stress"].shape == theirs.calc.results["stress"].shape == (3, 3)
    stress_gap = np.abs(ours.calc.results["stress"] - theirs.calc.results["stress"]).max()
    assert stress_gap <= TOLERANCE["s"] * 0.5


def test_relax_block_gives_reference_trajectory(chgnet_ref, compat_model, limno2):
    from fastchgnet.compat import StructOptimizer

    rattled = limno2.copy()
    rattled.perturb(0.05, min_distance=0.0, seed=0)  # unseeded, a rare rattle made FIRE diverge
    rattled.apply_strain(0.02)
    relaxer = StructOptimizer(compat_model)
    result = relaxer.relax(rattled, verbose=False)
    reference = _reference(lambda: chgnet_ref.CHGNet.load(use_device="cpu", verbose=False))
    expected = _reference(
        lambda: chgnet_ref.StructOptimizer(reference).relax(rattled, verbose=False)
    )
    trajectory, ref_trajectory = result["trajectory"], expected["trajectory"]
    assert len(trajectory) == len(ref_trajectory) > 2
    for field in ("energies", "forces", "stresses", "magmoms", "atom_positions", "cells"):
        assert len(getattr(trajectory, field)) == len(getattr(ref_trajectory, field))
        # the element types too: ``energies[-1].item()`` failed on a Python float
        ours, theirs = getattr(trajectory, field)[-1], getattr(ref_trajectory, field)[-1]
        assert (type(ours), ours.dtype) == (type(theirs), theirs.dtype), field
    n = len(limno2)
    energies = np.array(trajectory.energies) - np.array(ref_trajectory.energies)
    assert np.abs(energies).max() <= 10 * TOLERANCE["e"] * n
    final, ref_final = result["final_structure"], expected["final_structure"]
    assert np.abs(final.lattice.matrix - ref_final.lattice.matrix).max() < 1e-3
    assert (
        np.abs(
            np.array(final.site_properties["magmom"]) - ref_final.site_properties["magmom"]
        ).max()
        < 1e-3
    )


def test_md_block_gives_reference_trajectory(chgnet_ref, compat_model, limno2, tmp_path):
    from ase.md.velocitydistribution import thermalize_momenta

    from fastchgnet.compat import MolecularDynamics

    atoms = AseAtomsAdaptor.get_atoms(limno2)
    thermalize_momenta(atoms, temperature_K=1000, rng=np.random.default_rng(0))
    ref_atoms = atoms.copy()
    md = MolecularDynamics(
        atoms=atoms,
        model=compat_model,
        ensemble="nvt",
        temperature=1000,
        timestep=2,
        trajectory=str(tmp_path / "md_out.traj"),
        logfile=str(tmp_path / "md_out.log"),
        loginterval=2,
    )
    md.run(6)
    reference = _reference(lambda: chgnet_ref.CHGNet.load(use_device="cpu", verbose=False))
    ref_md = _reference(
        lambda: chgnet_ref.MolecularDynamics(
            atoms=ref_atoms,
            model=reference,
            ensemble="nvt",
            temperature=1000,
            timestep=2,
            loginterval=2,
            use_device="cpu",
        )
    )
    _reference(lambda: ref_md.run(6))
    assert np.abs(md.atoms.positions - ref_md.atoms.positions).max() < 1e-4
    frames = Trajectory(str(tmp_path / "md_out.traj"))
    assert len(frames) == 4
    assert frames[-1].get_magnetic_moments().shape == (len(limno2),)
    assert (tmp_path / "md_out.log").read_text().count("\n") == 5


def test_unsupported_options_say_what_to_use(compat_model, limno2):
    from ase.calculators.emt import EMT

    from fastchgnet.compat import MolecularDynamics, StructOptimizer, Trainer

    with pytest.raises(NotImplementedError, match=r"SGD.*not supported; use"):
        Trainer(compat_model, optimizer="SGD")
    with pytest.raises(NotImplementedError, match=r"wandb is not supported; set run\.tensorboard"):
        Trainer(compat_model, wandb_path="a/b")
    with pytest.raises(NotImplementedError, match="NPT without bulk_modulus with a calculator"):
        MolecularDynamics(limno2, model=EMT(), ensemble="npt")  # no CHGNet to fit one with
    with pytest.raises(ValueError, match="Optimizer 'Newton' not found"):
        StructOptimizer(compat_model, optimizer_class="Newton")


def test_isolated_atoms_follow_the_reference_setting(chgnet_ref, compat_model):
    from pymatgen.core import Lattice, Structure

    from fastchgnet.compat import CHGNetCalculator
    from fastchgnet.errors import StructureError

    # an O atom more than 6 Å from every other atom: no bond in the atom graph
    structure = Structure(
        Lattice.cubic(14.0), ["Si", "Si", "O"], [[0, 0, 0], [0.16, 0, 0], [0.5] * 3]
    )
    # "error" is the converter's default; a CHGNetCalculator sets its own (default "warn") on
    # the model it is given, as the reference's does
    compat_model.graph_converter.set_isolated_atom_response("error")
    with pytest.raises(StructureError, match=r"isolated atom\(s\) \[2\]"):
        compat_model.predict_structure(structure)
    reference = _reference(lambda: chgnet_ref.CHGNet.load(use_device="cpu", verbose=False))
    reference.graph_converter.set_isolated_atom_response("warn")
    expected = _reference(lambda: reference.predict_structure(structure))
    compat_model.graph_converter.set_isolated_atom_response("warn")
    try:
        with pytest.warns(UserWarning, match=r"isolated atom\(s\) \[2\]"):
            prediction = compat_model.predict_structure(structure)
    finally:
        compat_model.graph_converter.set_isolated_atom_response("error")
    for key, limit in TOLERANCE.items():
        assert np.abs(prediction[key] - expected[key]).max() <= limit, key
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = CHGNetCalculator(compat_model, use_device="cpu")  # "warn" by default
    with pytest.warns(UserWarning, match=r"isolated atom\(s\) \[2\]"):
        energy = atoms.get_potential_energy()
    assert energy == pytest.approx(float(expected["e"]) * 3, abs=1e-4)


def test_md_compile_decision_times_a_warm_calculator(compat_model, limno2, monkeypatch):
    """The compile-or-not decision times eager calls; the first call of a new calculator is
    cold (allocations, first kernels), so the MD makes it before deciding, as run_md does."""
    import fastchgnet.compat.molecular_dynamics as compat_md
    from fastchgnet.compat import MolecularDynamics

    seen: list[bool] = []

    def record(atoms, model, steps, stress, progress):
        seen.append("forces" in atoms.calc.results)  # a call was made before the decision
        return None

    monkeypatch.setattr(compat_md, "choose_compiled", record)
    atoms = AseAtomsAdaptor.get_atoms(limno2)
    md = MolecularDynamics(atoms=atoms, model=compat_model, ensemble="nve", timestep=1)
    md.run(1)
    assert seen == [True]


def test_calculator_and_relaxer_report_the_models_version_and_size(chgnet_ref, compat_model):
    """As the reference's: ``CHGNetCalculator.version`` / ``n_params`` and the same of
    ``StructOptimizer`` are the CHGNet's (not the potential that wraps it)."""
    from fastchgnet.compat import CHGNetCalculator, StructOptimizer

    reference = _reference(lambda: chgnet_ref.CHGNet.load(use_device="cpu", verbose=False))
    calculator = CHGNetCalculator(compat_model, use_device="cpu")
    relaxer = StructOptimizer(compat_model, use_device="cpu")
    assert calculator.n_params == relaxer.n_params == reference.n_params == compat_model.n_params
    assert calculator.version == relaxer.version == compat_model.version == "0.3.0"
    assert calculator.model is relaxer.calculator.model is compat_model  # as the reference's


def test_check_cuda_mem_picks_the_gpu_with_the_most_free_memory(monkeypatch) -> None:
    """As the reference's ``determine_device(check_cuda_mem=True)``: "cuda" becomes the index
    of the device with the most free memory; without it, plain "cuda"."""
    import torch

    from fastchgnet.compat.model import determine_device

    free = {0: 1 << 30, 1: 5 << 30, 2: 3 << 30}
    monkeypatch.delenv("CHGNET_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (free[index], 8 << 30))
    assert determine_device(check_cuda_mem=True) == "cuda:1"
    assert determine_device() == "cuda"
    assert determine_device("cpu", check_cuda_mem=True) == "cpu"


def test_trainer_refuses_a_device_training_would_not_run_on(compat_model, monkeypatch):
    """Training runs on the GPU where there is one, else the CPU: a ``use_device`` naming the
    other is refused in one line, not silently overruled."""
    from fastchgnet.compat import Trainer, trainer

    monkeypatch.setattr(trainer, "device_type", lambda: "cpu")
    with pytest.raises(NotImplementedError, match=r"use_device='cuda:1' is not supported"):
        Trainer(compat_model, use_device="cuda:1")
    Trainer(compat_model, use_device="cpu")


def test_an_ase_filters_name_that_is_no_filter_is_refused_as_the_reference_does(
    compat_model, limno2
):
    """``ase.filters`` also exports PropertyNotImplementedError, Optimizable, ...: taken for
    filters, they failed with an AttributeError inside ASE."""
    from fastchgnet.compat import StructOptimizer

    relaxer = StructOptimizer(compat_model)
    for name in ("PropertyNotImplementedError", "Optimizable", "NoSuchFilter"):
        with pytest.raises(ValueError, match=rf"Invalid ase_filter='{name}', must be one of "
                           r"\['ExpCellFilter', 'Filter', 'FrechetCellFilter'"):  # fmt: skip
            relaxer.relax(limno2, ase_filter=name, verbose=False, steps=1)
