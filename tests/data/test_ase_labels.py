"""extxyz / ASE-db sources with chosen key names and units; explicit split files."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import write

from fastchgnet.data.ase_labels import AseLabels, read_ase_labelled
from fastchgnet.data.frame import check_frame
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.errors import StructureError
from fastchgnet.md.calculator import as_atoms
from tests.data.frames import symmetric


def _atoms(n: int = 3, seed: int = 5):
    """Small crystals with DFT-style labels under non-ASE names: total energy ``E_dft`` (eV),
    forces ``F_dft`` (eV/Å), stress ``S_vasp`` (kBar, VASP sign), ``mag`` (μB)."""
    rng = np.random.default_rng(seed)
    frames = []
    for structure in varied_structures(n, seed=seed, max_atoms=6):
        atoms = as_atoms(structure)
        atoms.info["E_dft"] = -5.0 * len(atoms)
        atoms.info["S_vasp"] = symmetric(rng.normal(0, 20, size=(3, 3))).ravel()
        atoms.arrays["F_dft"] = rng.normal(0, 0.5, size=(len(atoms), 3))
        atoms.arrays["mag"] = -rng.random(len(atoms))
        frames.append(atoms)
    return frames


KEYS = AseLabels(energy="E_dft", forces="F_dft", stress="S_vasp", magmoms="mag",
                 stress_unit="kBar", stress_sign="vasp")  # fmt: skip


@pytest.mark.parametrize("suffix", [".extxyz", ".db"])
def test_chosen_keys_are_read_in_our_units(tmp_path, suffix):
    frames = _atoms()
    path = tmp_path / f"frames{suffix}"
    if suffix == ".db":  # as ASE-db users store labels: key-value pairs and data
        from ase.db import connect

        with connect(str(path)) as db:
            for atoms in frames:
                data = {"S_vasp": atoms.info["S_vasp"], "F_dft": atoms.arrays["F_dft"]}
                data["mag"] = atoms.arrays["mag"]
                db.write(atoms, E_dft=atoms.info["E_dft"], data=data)
    else:
        write(str(path), frames)
    read = list(read_ase_labelled(path, KEYS))
    assert len(read) == len(frames)
    for frame, atoms in zip(read, frames, strict=True):
        assert frame.energy_per_atom == pytest.approx(-5.0)
        np.testing.assert_allclose(frame.forces, atoms.arrays["F_dft"], rtol=1e-6)
        np.testing.assert_allclose(
            frame.stress, -0.1 * atoms.info["S_vasp"].reshape(3, 3), rtol=1e-6
        )
        np.testing.assert_allclose(frame.magmoms, np.abs(atoms.arrays["mag"]), rtol=1e-6)


def test_per_atom_energy_and_ase_stress(tmp_path):
    frames = _atoms(1)
    frames[0].info["e_atom"] = -5.0
    frames[0].info["s_ase"] = np.full(6, 0.01)  # eV/Å^3, Voigt
    write(str(tmp_path / "f.extxyz"), frames)
    labels = AseLabels(energy="e_atom", energy_per_atom=True, stress="s_ase", forces="",
                       magmoms="")  # fmt: skip
    (frame,) = read_ase_labelled(tmp_path / "f.extxyz", labels)
    assert frame.energy_per_atom == pytest.approx(-5.0)
    assert frame.stress[0, 0] == pytest.approx(0.01 * 160.21766208)
    assert frame.forces is None


def test_wrong_key_name_lists_the_keys_the_file_has(tmp_path):
    write(str(tmp_path / "f.extxyz"), _atoms(1))
    with pytest.raises(ValueError, match=r"\['energy_dft'\] not in the first frame.*E_dft"):
        next(read_ase_labelled(tmp_path / "f.extxyz", AseLabels(energy="energy_dft")))


def test_label_of_wrong_shape_is_the_frames_problem_naming_it(tmp_path):
    """A stress of an unknown shape used to stop the whole read; now that frame carries the
    problem (conversion skips it) and the others are read."""
    frames = _atoms(2)
    frames[1].info["S_vasp"] = np.zeros(2)
    write(str(tmp_path / "f.extxyz"), frames)
    good, bad = read_ase_labelled(tmp_path / "f.extxyz", KEYS)
    assert good.problem is None
    assert bad.problem == "stress 'S_vasp' has shape (2,), expected (6,), (9,) or (3, 3)"
    with pytest.raises(StructureError, match=r"frame f-1 .*stress 'S_vasp' has shape \(2,\)"):
        check_frame(bad)


def test_stress_in_wrong_units_is_flagged_by_magnitude(tmp_path):
    frames = _atoms(1)
    frames[0].info["S_vasp"] = np.full(9, 2500.0)  # 250 GPa in kBar: plausible for 'kBar' only
    write(str(tmp_path / "f.extxyz"), frames)
    as_gpa = AseLabels(energy="E_dft", forces="F_dft", stress="S_vasp", magmoms="mag",
                       stress_unit="GPa")  # fmt: skip
    (frame,) = read_ase_labelled(tmp_path / "f.extxyz", as_gpa)
    with pytest.raises(StructureError, match=r"frame f-0 .*2500 GPa.*stress_unit"):
        check_frame(frame)
    frames[0].info["S_vasp"] = np.full(9, 250.0)
    write(str(tmp_path / "f.extxyz"), frames)
    assert next(iter(read_ase_labelled(tmp_path / "f.extxyz", KEYS))).stress[0, 0] == -25.0


def test_total_energy_read_as_per_atom_is_flagged(tmp_path):
    frames = _atoms(1)
    frames[0].info["E_dft"] = -300.0
    write(str(tmp_path / "f.extxyz"), frames)
    per_atom = AseLabels(energy="E_dft", energy_per_atom=True, forces="", magmoms="")
    (frame,) = read_ase_labelled(tmp_path / "f.extxyz", per_atom)
    assert "-300 eV/atom exceeds 50.0 eV/atom" in frame.problem
    assert "energy_per_atom" in frame.problem


def test_explicit_train_val_test_files_make_the_split(tmp_path):
    from fastchgnet.train.cache_sources import resolve_cache
    from fastchgnet.train.config import DataConfig
    from fastchgnet.train.loading import make_splits

    for name, seed in (("train", 1), ("val", 2), ("test", 3)):
        write(str(tmp_path / f"{name}.extxyz"), _atoms(3 if name == "train" else 2, seed))
    config = DataConfig(
        source=str(tmp_path / "train.extxyz"),
        val_source=str(tmp_path / "val.extxyz"),
        test_source=str(tmp_path / "test.extxyz"),
        labels=KEYS,
    )
    cache = resolve_cache(config, tmp_path, (6.0, 3.0), True)
    splits = make_splits(cache, config)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [3, 2, 2]
    ids = splits.dataset.frame_ids
    assert all(str(ids[k]).startswith("val:val-") for k in splits.val)


def test_default_keys_read_the_bundled_set_as_read_ase(tmp_path):
    from fastchgnet.data.sources import gunzip_ase_file, read_ase
    from fastchgnet.train.loading import quickstart_path

    plain = gunzip_ase_file(quickstart_path(), tmp_path)
    old = read_ase(plain, index=":200")
    new = read_ase_labelled(plain)
    compared = 0
    for a, b in zip(old, new, strict=False):
        compared += 1
        assert (a.material_id, a.frame_id) == (b.material_id, b.frame_id)
        assert a.energy_per_atom == b.energy_per_atom
        for label in ("forces", "stress", "magmoms"):
            np.testing.assert_array_equal(getattr(a, label), getattr(b, label))
    assert compared == 200


def test_label_keys_are_a_typed_config_table():
    from fastchgnet.train.config import TrainConfig, apply_overrides

    config = TrainConfig.from_dict({"data": {"labels": {"energy": "E_dft", "stress_unit": "kBar"}}})
    assert config.data.labels == AseLabels(energy="E_dft", stress_unit="kBar")
    config = apply_overrides(config, ["data.labels.stress_sign=vasp"])
    assert config.data.labels.stress_factor == -0.1
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="stress_unit='MPa'"):
        TrainConfig.from_dict({"data": {"labels": {"stress_unit": "MPa"}}})
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"data": {"labels": {"energy_key": "E"}}})


def test_frames_are_streamed_not_read_whole(tmp_path, monkeypatch):
    """One frame is parsed and converted per step (ASE's iread keeps only frame offsets)."""
    import fastchgnet.data.ase_labels as ase_labels

    parsed = []
    real = ase_labels.frame_from_atoms
    monkeypatch.setattr(
        ase_labels, "frame_from_atoms", lambda atoms, *a: parsed.append(1) or real(atoms, *a)
    )
    path = tmp_path / "f.extxyz"
    write(str(path), _atoms(3))
    frames = read_ase_labelled(path, KEYS)
    assert parsed == []
    next(frames)
    assert len(parsed) == 1
    assert len(list(frames)) == 2


def test_a_gzipped_file_is_read_from_one_decompressed_copy(tmp_path, monkeypatch):
    """``read_frames`` on .extxyz.gz: the same frames (ids too) as the plain file, without
    seeking in the gzip stream (ASE seeks back to every frame: quadratic there), and the
    decompressed copy is gone once the frames are read."""
    import gzip
    import shutil

    from fastchgnet.data.sources import read_frames

    plain = tmp_path / "frames.extxyz"
    write(str(plain), _atoms(4))
    packed = tmp_path / "gz" / "frames.extxyz.gz"
    packed.parent.mkdir()
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    seeks = []
    seek = gzip.GzipFile.seek
    monkeypatch.setattr(gzip.GzipFile, "seek", lambda f, *a: seeks.append(a) or seek(f, *a))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    frames = read_frames(packed, labels=KEYS, scratch=scratch)
    first = next(iter(frames))
    assert len(list(scratch.iterdir())) == 1  # the copy, while frames are read
    unpacked = [first, *frames]
    assert seeks == []
    assert list(scratch.iterdir()) == []
    expected = list(read_frames(plain, labels=KEYS))
    assert [(f.frame_id, f.material_id) for f in unpacked] == [
        (f.frame_id, f.material_id) for f in expected
    ]
    for a, b in zip(unpacked, expected, strict=True):
        np.testing.assert_array_equal(a.forces, b.forces)


def test_convert_and_stats_take_label_keys(tmp_path, capsys):
    from fastchgnet.cli import main
    from fastchgnet.data.ase_labels import labels_from_json
    from fastchgnet.data.cache import GraphDataset

    write(str(tmp_path / "f.extxyz"), _atoms(3))
    keys = '{"energy": "E_dft", "forces": "F_dft", "stress": "S_vasp", "magmoms": "mag", '
    keys += '"stress_unit": "kBar", "stress_sign": "vasp"}'
    assert labels_from_json(keys) == KEYS
    main(["data", "stats", str(tmp_path / "f.extxyz"), "--labels", keys])
    assert "stress GPa             3" in capsys.readouterr().out
    main(["data", "convert", str(tmp_path / "f.extxyz"), "-o", str(tmp_path / "c"),
          "--workers", "1", "--labels", keys])  # fmt: skip
    _, labels = GraphDataset(tmp_path / "c")[0]
    assert labels.energy_per_atom == pytest.approx(-5.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['energy_key'\]"):
        labels_from_json('{"energy_key": "E"}')


def test_convert_decompresses_a_gzipped_source_beside_the_cache(tmp_path, monkeypatch):
    """``fastchgnet data convert x.extxyz.gz -o out/cache``: the decompressed copy goes under
    ``out`` (not a possibly small /tmp) and is gone afterwards; every frame is converted."""
    import gzip

    from fastchgnet.cli import main
    from fastchgnet.data import sources
    from fastchgnet.data.cache import GraphDataset

    plain = tmp_path / "f.extxyz"
    write(str(plain), _atoms(3))
    packed = tmp_path / "f.extxyz.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    scratches = []
    read = sources.read_frames
    monkeypatch.setattr(
        sources,
        "read_frames",
        lambda *a, scratch=None, **k: scratches.append(scratch) or read(*a, scratch=scratch, **k),
    )
    out = tmp_path / "out"
    main(["data", "convert", str(packed), "-o", str(out / "cache"), "--workers", "1"])
    assert scratches == [out]
    assert [p.name for p in out.iterdir()] == ["cache"]
    assert len(GraphDataset(out / "cache")) == 3
