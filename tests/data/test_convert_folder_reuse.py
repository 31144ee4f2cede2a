"""A convert that failed before building any shard leaves its folder free for a corrected
rerun with other settings; one with a complete shard still refuses other settings."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from fastchgnet.cli import main
from fastchgnet.data.cache import CacheError
from fastchgnet.data.convert import convert
from fastchgnet.data.sources import read_frames


def _custom_extxyz(path):
    frames = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.02, seed=seed)
        atoms.info["E_dft"] = -14.0
        atoms.arrays["F_dft"] = np.zeros((4, 3))
        frames.append(atoms)
    write(path, frames)
    return path


def test_a_failed_convert_does_not_block_the_corrected_rerun(tmp_path, capsys):
    source, out = _custom_extxyz(tmp_path / "custom.extxyz"), tmp_path / "c_typo"
    base = ["data", "convert", str(source), "-o", str(out), "--workers", "1", "--labels"]
    assert main([*base, '{"energy": "E_DFT"}']) == 1
    assert "not in the first frame" in capsys.readouterr().err
    assert main([*base, '{"energy": "E_dft", "forces": "F_dft"}']) == 0
    assert "converted 3 structures" in capsys.readouterr().out


def test_a_built_cache_still_refuses_other_settings(tmp_path):
    source, out = _custom_extxyz(tmp_path / "custom.extxyz"), tmp_path / "c"
    convert(read_frames(source), out, workers=1, progress=False)
    with pytest.raises(CacheError, match="built with settings other than asked"):
        convert(read_frames(source), out, atom_cutoff=5.0, workers=1, progress=False)
