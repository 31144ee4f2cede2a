"""A chgnet ``CHGNet`` (``chgnet.model.CHGNet.load()``) given as the ``model`` of a compat
class runs as ours (it raised AttributeError: 'CHGNet' object has no attribute 'config')."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pymatgen.io.ase import AseAtomsAdaptor

from fastchgnet.compat import (
    CHGNet,
    CHGNetCalculator,
    EquationOfState,
    MolecularDynamics,
    StructOptimizer,
)
from fastchgnet.compat.model import is_reference_model


@pytest.fixture(scope="module")
def reference_model(chgnet_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return chgnet_ref.CHGNet.load(verbose=False, use_device="cpu")


def test_a_chgnet_model_is_told_by_its_class_module(reference_model, compat_model):
    assert is_reference_model(reference_model)
    assert not is_reference_model(compat_model)


def test_calculator_runs_a_chgnet_model_as_ours(reference_model, compat_model, limno2):
    calculator = CHGNetCalculator(model=reference_model, use_device="cpu")
    assert isinstance(calculator.model, CHGNet)
    atoms = AseAtomsAdaptor.get_atoms(limno2)
    atoms.calc = calculator
    expected = compat_model.predict_structure(limno2, task="ef")
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(
        float(expected["e"]), abs=1e-5
    )
    np.testing.assert_allclose(atoms.get_forces(), expected["f"], atol=1e-4)


def test_relaxation_md_and_eos_take_a_chgnet_model(reference_model, limno2):
    relaxer = StructOptimizer(model=reference_model, use_device="cpu")
    result = relaxer.relax(limno2.copy(), steps=2, verbose=False)
    assert len(result["trajectory"]) >= 2
    md = MolecularDynamics(limno2.copy(), model=reference_model, use_device="cpu", compiled=False)
    md.run(2)
    assert isinstance(md.atoms.calc.model, CHGNet)
    assert isinstance(EquationOfState(model=reference_model, use_device="cpu").model, CHGNet)


def test_the_trainer_refuses_a_chgnet_model_it_could_not_train_in_place(reference_model):
    from fastchgnet.compat import Trainer

    with pytest.raises(TypeError, match=r"CHGNet\.from_dict\(model\.as_dict\(\)\)"):
        Trainer(model=reference_model, epochs=1)
