"""resolve_cache reuses a cache only when it was built from the config's sources, label settings,
cutoffs and at least ``max_structures`` structures; the run's own cache is rebuilt otherwise, a
named cache_dir or a prebuilt cache is refused in one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from ase.io import write

from fastchgnet.data.ase_labels import AseLabels
from fastchgnet.data.cache import CacheError, GraphDataset
from fastchgnet.data.convert import convert
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.data.sources import read_frames
from fastchgnet.md.calculator import as_atoms
from fastchgnet.train.cache_sources import resolve_cache
from fastchgnet.train.config import DataConfig
from fastchgnet.train.loading import make_splits
from tests.data.frames import symmetric

CUTOFFS = (6.0, 3.0)
#: stress in kBar under "S_vasp", as a VASP-sign file; the sign is what the runs below change
KBAR = AseLabels(energy="E_dft", forces="F_dft", stress="S_vasp", magmoms="", stress_unit="kBar")


def write_frames(path, n, seed=5):
    rng = np.random.default_rng(seed)
    frames = []
    for structure in varied_structures(n, seed=seed, max_atoms=4):
        atoms = as_atoms(structure)
        atoms.info["E_dft"] = -5.0 * len(atoms)
        atoms.info["S_vasp"] = symmetric(rng.normal(0, 20, size=(3, 3))).ravel()
        atoms.arrays["F_dft"] = rng.normal(0, 0.5, size=(len(atoms), 3))
        frames.append(atoms)
    write(str(path), frames)
    return path


def first_stress(cache):
    return GraphDataset(cache)[0][1].stress


def test_a_changed_stress_sign_rebuilds_the_runs_own_cache(tmp_path, capsys):
    config = DataConfig(source=str(write_frames(tmp_path / "f.extxyz", 3)), labels=KBAR)
    out = tmp_path / "run"
    before = first_stress(resolve_cache(config, out, CUTOFFS, True))
    capsys.readouterr()
    flipped = replace(config, labels=replace(KBAR, stress_sign="vasp"))
    cache = resolve_cache(flipped, out, CUTOFFS, True)
    said = capsys.readouterr().out
    assert "labels.stress_sign: 'ase' in the cache, 'vasp' now" in said
    assert "rebuilding" in said
    np.testing.assert_allclose(first_stress(cache), -before)


def test_a_missing_source_is_an_error_even_when_an_old_cache_exists(tmp_path):
    config = DataConfig(source=str(write_frames(tmp_path / "f.extxyz", 3)), labels=KBAR)
    resolve_cache(config, tmp_path / "run", CUTOFFS, True)
    gone = replace(config, source=str(tmp_path / "nonexistent.extxyz"))
    with pytest.raises(FileNotFoundError, match=r"nonexistent\.extxyz: no such file"):
        resolve_cache(gone, tmp_path / "run", CUTOFFS, True)


def test_a_rewritten_source_file_rebuilds_the_runs_own_cache(tmp_path, capsys):
    source = write_frames(tmp_path / "f.extxyz", 3)
    config = DataConfig(source=str(source), labels=KBAR)
    assert len(GraphDataset(resolve_cache(config, tmp_path / "run", CUTOFFS, True))) == 3
    write_frames(source, 5, seed=6)
    cache = resolve_cache(config, tmp_path / "run", CUTOFFS, True)
    assert "source.size" in capsys.readouterr().out
    assert len(GraphDataset(cache)) == 5


def test_other_cutoffs_rebuild_the_runs_own_cache(tmp_path):
    config = DataConfig(source=str(write_frames(tmp_path / "f.extxyz", 3)), labels=KBAR)
    resolve_cache(config, tmp_path / "run", CUTOFFS, True)
    cache = resolve_cache(config, tmp_path / "run", (5.0, 3.0), True)
    assert GraphDataset(cache).atom_cutoff == 5.0


def test_a_named_cache_dir_that_does_not_match_is_refused_and_kept(tmp_path):
    shared = tmp_path / "shared-cache"
    source = write_frames(tmp_path / "f.extxyz", 3)
    config = DataConfig(source=str(source), labels=KBAR, cache_dir=str(shared))
    resolve_cache(config, tmp_path / "run", CUTOFFS, True)
    manifest = (shared / "manifest.json").read_text()
    flipped = replace(config, labels=replace(KBAR, stress_sign="vasp"))
    with pytest.raises(CacheError, match=r"labels.stress_sign.*not this run's to rebuild"):
        resolve_cache(flipped, tmp_path / "run", CUTOFFS, True)
    assert (shared / "manifest.json").read_text() == manifest
    assert resolve_cache(config, tmp_path / "run2", CUTOFFS, True) == shared  # still matches


def test_a_cache_made_before_records_is_rebuilt_when_it_is_the_runs_own(tmp_path, capsys):
    source = write_frames(tmp_path / "f.extxyz", 3)
    old = tmp_path / "run" / "cache"
    convert(list(read_frames(source, labels=KBAR)), old, workers=1, progress=False)
    manifest = json.loads((old / "manifest.json").read_text())
    assert "origin" not in manifest  # a list of frames carries no record, as before
    config = DataConfig(source=str(source), labels=KBAR)
    cache = resolve_cache(config, tmp_path / "run", CUTOFFS, True)
    assert "no record of its source" in capsys.readouterr().out
    assert "origin" in json.loads((cache / "manifest.json").read_text())


def test_max_structures_converts_only_the_first_structures_and_is_recorded(tmp_path, capsys):
    source = write_frames(tmp_path / "f.extxyz", 12)
    full = DataConfig(source=str(source), labels=KBAR, split=(1.0, 0.0, 0.0))
    everything = GraphDataset(resolve_cache(full, tmp_path / "full", CUTOFFS, True))
    few = replace(full, max_structures=4)
    cache = resolve_cache(few, tmp_path / "run", CUTOFFS, True)
    assert len(GraphDataset(cache)) == 4  # the reader stopped there
    splits = make_splits(cache, few)
    assert list(splits.dataset.frame_ids[splits.train]) == list(everything.frame_ids[:4])
    capsys.readouterr()
    assert resolve_cache(replace(full, max_structures=3), tmp_path / "run", CUTOFFS, True)
    assert "rebuilding" not in capsys.readouterr().out  # 3 of the 4 held
    cache = resolve_cache(full, tmp_path / "run", CUTOFFS, True)
    assert "holds only the first 4 structures" in capsys.readouterr().out
    assert len(GraphDataset(cache)) == 12


@pytest.mark.parametrize("key", ["val_source", "test_source", "replay_source"])
def test_a_prebuilt_cache_cannot_take_frames_from_other_sources(tmp_path, key):
    source = write_frames(tmp_path / "f.extxyz", 3)
    prebuilt = tmp_path / "prebuilt"
    convert(read_frames(source, labels=KBAR), prebuilt, workers=1, progress=False)
    replay = {"replay_fraction": 0.5} if key == "replay_source" else {}
    config = DataConfig(source=str(prebuilt), labels=KBAR, **{key: str(source)}, **replay)
    with pytest.raises(CacheError, match=rf"data\.{key}=.*cannot be combined with a prebuilt"):
        resolve_cache(config, tmp_path / "run", CUTOFFS, True)


def test_a_truncated_prebuilt_cache_is_refused_for_more_structures(tmp_path):
    source = write_frames(tmp_path / "f.extxyz", 6)
    prebuilt = tmp_path / "prebuilt"
    convert(read_frames(source, labels=KBAR), prebuilt, workers=1, progress=False, max_structures=2)
    config = DataConfig(source=str(prebuilt))
    with pytest.raises(CacheError, match="holds only the first 2 structures"):
        resolve_cache(config, tmp_path / "run", CUTOFFS, True)
    assert resolve_cache(replace(config, max_structures=2), tmp_path, CUTOFFS, True) == prebuilt


def test_resume_refuses_data_whose_source_changed_since_the_checkpoint(tmp_path, capsys):
    # the cache was rebuilt from the changed file and the checkpoint's position applied to it
    source = write_frames(tmp_path / "f.extxyz", 4)
    config = DataConfig(source=str(source), labels=KBAR)
    out = tmp_path / "run"
    cache = resolve_cache(config, out, CUTOFFS, True)
    assert resolve_cache(config, out, CUTOFFS, True, resume=True) == cache  # unchanged: on
    write_frames(source, 3)  # the file cut to 3 frames
    with pytest.raises(CacheError, match=r"^--resume: cache .* does not match the config \(data"):
        resolve_cache(config, out, CUTOFFS, True, resume=True)
    assert len(GraphDataset(cache)) == 4  # kept for a restored file


def test_resume_after_the_cache_was_deleted_rebuilds_it_from_the_same_source(tmp_path):
    config = DataConfig(source=str(write_frames(tmp_path / "f.extxyz", 4)), labels=KBAR)
    out = tmp_path / "run"
    cache = resolve_cache(config, out, CUTOFFS, True)
    before = first_stress(cache)
    shutil.rmtree(cache)
    np.testing.assert_array_equal(
        first_stress(resolve_cache(config, out, CUTOFFS, True, True)), before
    )
