"""``--model`` given a file: ours, chgnet's own checkpoints, and one-line words for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastchgnet.cli import main
from fastchgnet.cli.inputs import load_model


def chgnet_pretrained(version: str) -> Path:
    chgnet = pytest.importorskip("chgnet")
    found = sorted((Path(chgnet.__file__).parent / "pretrained" / version).glob("*.pth.tar"))
    if not found:
        pytest.skip(f"chgnet's {version} file is not installed")
    return found[0]


def test_chgnets_own_checkpoint_loads_as_its_version_and_says_what_it_read(capsys, model):
    path = chgnet_pretrained("0.3.0")
    loaded = load_model(str(path))
    for ours, theirs in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"fastchgnet: {path}: a chgnet Trainer checkpoint, read by ")
    assert "load_model_file (atom graph 6.0 Å, bond graph 3.0 Å)" in err


def test_a_chgnet_as_dict_file_loads_too(tmp_path, capsys, model):
    from fastchgnet.model.chgnet_files import read_checkpoint

    as_dict = read_checkpoint(chgnet_pretrained("0.3.0"))["model"]  # model_args, state_dict
    torch.save(as_dict, tmp_path / "as_dict.pt")
    loaded = load_model(str(tmp_path / "as_dict.pt"))
    assert torch.equal(
        loaded.state_dict()["composition.energies"], model.state_dict()["composition.energies"]
    )
    assert "a chgnet as_dict, read by" in capsys.readouterr().err


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def structure_file(folder: Path) -> str:
    from pymatgen.core import Lattice, Structure

    path = folder / "nacl.cif"
    Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(path))
    return str(path)


def test_a_text_file_as_model_is_called_not_a_torch_file(tmp_path, capsys):
    (tmp_path / "txt.pt").write_text("101\n")
    assert main(["predict", structure_file(tmp_path), "--model", str(tmp_path / "txt.pt")]) == 1
    err = one_line_error(capsys)
    assert "txt.pt: not a model file: not a torch file (it is text, beginning '101')" in err


def test_a_state_dict_as_model_is_called_a_state_dict_with_how_to_load_it(tmp_path, capsys, model):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert main(["predict", structure_file(tmp_path), "--model", str(tmp_path / "weights.pt")]) == 1
    err = one_line_error(capsys)
    assert f"weights.pt: a state dict ({len(model.state_dict())} tensors, no model settings)" in err
    assert "load_state_dict" in err
    assert "load_model_file" not in err


@pytest.mark.parametrize("change", ["shape", "missing", "extra"])
def test_weights_that_do_not_fit_their_architecture_are_a_one_line_error(
    tmp_path, capsys, model, change
):
    # a checksummed file whose weights do not fit its config: load_state_dict's traceback
    from fastchgnet.files import write_checksummed
    from fastchgnet.model.io import FORMAT, FORMAT_VERSION

    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    name = next(iter(weights))
    if change == "shape":
        weights[name] = torch.zeros(3, 3)
    elif change == "missing":
        del weights[name]
    else:
        weights["stray.weight"] = torch.zeros(1)
    path = tmp_path / "m.pt"
    write_checksummed(path, {"config": model.config.to_dict(), "weights": weights}, FORMAT,
                      FORMAT_VERSION)  # fmt: skip
    structure = tmp_path / "a.cif"
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]).to(filename=str(structure))
    assert main(["predict", str(structure), "--model", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"{path}: the weights do not fit the architecture" in err
    word = {"shape": "of another shape", "missing": "missing", "extra": "not in the architecture"}
    assert f"1 {word[change]} (first: {'stray.weight' if change == 'extra' else name}" in err


def test_a_text_file_loaded_as_a_model_says_what_it_is_not(tmp_path):
    # torch's reader gave a bare KeyError '101': "not a readable ... file (101)"
    from fastchgnet import FastCHGNet

    path = tmp_path / "m.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"m\.txt: not a readable .* \(not a torch file, or a"):
        FastCHGNet.load(path)
