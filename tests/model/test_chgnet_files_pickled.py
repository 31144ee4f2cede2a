"""A chgnet Trainer file of a CHGNet made with ``composition_model=AtomRef(...)`` pickles that
module into its model_args; it loads (the module read as an inert stand-in, its weights from
the state dict) with the reference's numbers, while any other pickled object is refused."""

from __future__ import annotations

import contextlib
import datetime
import io

import pytest
import torch
from pymatgen.core import Lattice, Structure

from fastchgnet import FastCHGNet
from fastchgnet.model.chgnet_files import load_model_file, read_checkpoint


def test_a_trainer_file_with_a_pickled_atomref_loads_with_the_references_numbers(tmp_path):
    pytest.importorskip("chgnet")
    from chgnet.model import CHGNet
    from chgnet.model.composition_model import AtomRef

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = CHGNet(
            atom_fea_dim=16, bond_fea_dim=16, angle_fea_dim=16, num_radial=9,
            num_angular=9, composition_model=AtomRef(is_intensive=True),
        )  # fmt: skip
    with torch.no_grad():
        reference.composition_model.fc.weight.normal_()
    reference.composition_model.fitted = True  # as its fit() leaves it
    path = tmp_path / "bestE_epoch1.pth.tar"
    torch.save({"model": reference.as_dict(), "optimizer": {}, "epoch": 1}, path)
    structure = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    expected = float(reference.predict_structure(structure, task="e")["e"])
    ours = load_model_file(FastCHGNet, path)
    assert float(ours.predict_structure(structure)["e"]) == pytest.approx(expected, abs=1e-5)


def test_any_other_pickled_object_is_refused(tmp_path):
    path = tmp_path / "odd.pth.tar"
    torch.save(
        {"model": {"state_dict": {}, "model_args": {"when": datetime.date(2020, 1, 1)}}}, path
    )
    with pytest.raises(ValueError, match=r"odd\.pth\.tar: refused: it holds pickled Python"):
        read_checkpoint(path)


def test_a_chgnet_norm_we_do_not_build_is_named_as_chgnet_names_it(tmp_path):
    """gMLP_norm='batch' read from a chgnet file said gated_norm='batch' (our name)."""
    from fastchgnet.model.reference import config_from_reference

    with pytest.raises(ValueError, match=r"^f\.pth\.tar: gMLP_norm='batch' is not supported"):
        config_from_reference({"gMLP_norm": "batch"}, "f.pth.tar")
    with pytest.raises(ValueError, match=r"^f\.pth\.tar: readout_norm='batch' is not"):
        config_from_reference({"readout_norm": "batch"}, "f.pth.tar")


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("model_args", {"conv_norm": "numpy-str"}),  # a refused setting hidden in numpy
        ("model_args", {"atom_fea_dim": "numpy-int"}),
        ("trainer_args", {"learning_rate": "numpy-float"}),
    ],
)
def test_numpy_objects_outside_an_atomref_are_refused_naming_where(tmp_path, where, value):
    """Only an AtomRef given as composition_model is read as a stand-in: a numpy scalar in
    model_args (a conv_norm the model cannot build, a width) or trainer_args was let through
    as None, loading a refused architecture silently or failing later."""
    import numpy as np

    made = {
        "numpy-str": np.str_("batch"),
        "numpy-int": np.int64(64),
        "numpy-float": np.float64(1e-3),
    }
    key, kind = next(iter(value.items()))
    payload = {"model": {"model_args": {}, "state_dict": {}}, "trainer_args": {}}
    target = payload["model"]["model_args"] if where == "model_args" else payload[where]
    target[key] = made[kind]
    path = tmp_path / "sweep.pth.tar"
    torch.save(payload, path)
    # refused naming the key, or (where another library has allowed some numpy class in this
    # process, as the full suite's imports do) by torch's own refusal of the next one
    with pytest.raises(ValueError, match=r"sweep\.pth\.tar: refused: ") as refusal:
        read_checkpoint(path)
    assert key in str(refusal.value) or "pickled Python objects" in str(refusal.value)


def test_a_text_file_or_a_bare_state_dict_is_named_for_what_it_is(tmp_path):
    """The library said 'refused: it holds pickled Python objects' of a text file, and read a
    state dict (no settings) as a chgnet file with unknown keys; the CLI alone knew better."""
    text = tmp_path / "notes.pt"
    text.write_text("101 epochs\n")
    with pytest.raises(ValueError, match=r"notes\.pt: not a model file: not a torch file \(it is"):
        load_model_file(FastCHGNet, text)
    weights = tmp_path / "weights.pt"
    torch.save(FastCHGNet(n_conv=2).state_dict(), weights)
    with pytest.raises(ValueError, match=r"weights\.pt: a state dict \(\d+ tensors, no model"):
        load_model_file(FastCHGNet, weights)
