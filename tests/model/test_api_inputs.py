"""The Python API on inputs users meet: strained pymatgen structures (Fortran-ordered
lattices), prediction under torch.inference_mode, a NaN fmax, an old model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from fastchgnet.files import ChecksumError, read_checksummed, write_checksummed
from fastchgnet.md.relax import relax

ROCKSALT = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_a_strained_structure_with_a_fortran_ordered_lattice_is_predicted(model):
    strained = ROCKSALT.copy()
    strained.apply_strain(0.01)
    assert not strained.lattice.matrix.flags["C_CONTIGUOUS"]
    plain = Structure(np.ascontiguousarray(strained.lattice.matrix), ["Na", "Cl"],
                      strained.frac_coords)  # fmt: skip
    got, expected = model.predict_structure(strained), model.predict_structure(plain)
    np.testing.assert_allclose(got["f"], expected["f"], atol=1e-6)
    assert got["e"] == pytest.approx(expected["e"], abs=1e-6)


def test_prediction_under_inference_mode_equals_prediction_outside_it(model):
    outside = model.predict_structure(ROCKSALT)
    with torch.inference_mode():
        inside = model.predict_structure(ROCKSALT)
    for key in ("e", "f", "s", "m"):
        np.testing.assert_array_equal(inside[key], outside[key])


def test_relax_refuses_a_nan_fmax(model):
    with pytest.raises(ValueError, match="need fmax > 0"):
        relax(ROCKSALT, model, fmax=float("nan"))


def test_a_file_of_an_older_format_says_so(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "fastchgnet-model", "body": torch.zeros(1)}, path)  # no version
    with pytest.raises(ChecksumError, match=r"no version \(an older format\).*reads version 2"):
        read_checksummed(path, "fastchgnet-model", (2,))
    write_checksummed(tmp_path / "new.pt", {"x": 1}, "fastchgnet-model", 2)
    assert read_checksummed(tmp_path / "new.pt", "fastchgnet-model", (2,)) == (2, {"x": 1})


@pytest.mark.parametrize("wrong", [ROCKSALT.as_dict(), 5, "NaCl.cif"])
def test_a_structure_of_the_wrong_type_is_one_line_naming_the_type(model, wrong):
    with pytest.raises(TypeError, match=f"got {type(wrong).__name__} "):
        model.predict_structure(wrong)


@pytest.mark.parametrize("wrong", [ROCKSALT.as_dict(), 5, "NaCl.cif"])
def test_compat_predict_structure_of_the_wrong_type_is_one_line_naming_the_type(wrong):
    from fastchgnet.compat import CHGNet
    from fastchgnet.model.config import ModelConfig

    with pytest.raises(TypeError, match=f"got {type(wrong).__name__} .*Structure.from_"):
        CHGNet(ModelConfig()).predict_structure(wrong)


def test_run_md_on_a_list_says_it_runs_one_structure(model):
    from fastchgnet.md.dynamics import run_md

    with pytest.raises(TypeError, match=r"got list .*one structure at a time"):
        run_md([ROCKSALT, ROCKSALT], model, steps=1)


def test_saving_a_model_onto_a_folder_names_the_folder(model, tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a folder"):
        model.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_loading_a_chgnet_file_as_ours_says_what_loads_it(tmp_path):
    from fastchgnet import FastCHGNet

    path = tmp_path / "chgnet.pth.tar"
    torch.save({"model": {"a": torch.zeros(1)}, "model_args": {}}, path)
    with pytest.raises(ChecksumError, match=r"not a fastchgnet-model file .*load_model_file"):
        FastCHGNet.load(path)


@pytest.mark.parametrize(
    ("batch_size", "error"),
    [(2.5, TypeError), ("4", TypeError), (True, TypeError), (0, ValueError)],
)
def test_a_batch_size_that_is_not_a_positive_int_is_one_line_naming_it(model, batch_size, error):
    from fastchgnet.compat import CHGNet
    from fastchgnet.model.config import ModelConfig
    from fastchgnet.model.potential import predict_structures

    expected = rf"^batch_size must be an int >= 1, got {batch_size!r}"
    with pytest.raises(error, match=expected):
        predict_structures(model, ROCKSALT, batch_size=batch_size)
    with pytest.raises(error, match=expected):
        CHGNet(ModelConfig()).predict_structure(ROCKSALT, task="e", batch_size=batch_size)
