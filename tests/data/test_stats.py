"""``fastchgnet data stats``: counts, ranges and outliers of a source, in one pass."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from fastchgnet.data.frame import Frame
from fastchgnet.data.stats import dataset_stats, format_stats


def _frame(index: int, energy: float, stress: float = 1.0) -> Frame:
    structure = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Frame(
        structure=structure,
        energy_per_atom=energy,
        forces=np.full((2, 3), 0.1 * index),
        stress=np.eye(3) * stress,
        magmoms=None,
        material_id=f"m{index}",
        frame_id=str(index),
    )


def test_stats_report_counts_ranges_and_outliers():
    frames = [_frame(k, -3.0 + 0.01 * k) for k in range(30)]
    frames.append(_frame(30, 40.0))  # far from the others
    frames.append(_frame(31, -3.0, stress=500.0))
    stats = dataset_stats(frames)
    assert stats["frames"] == 32
    assert stats["elements"] == {"Na": 32, "Cl": 32}
    assert stats["labels"]["energy_per_atom"]["max"] == 40.0
    assert stats["labels"]["forces"]["max"] == pytest.approx(3.1)
    assert "magmoms" not in stats["labels"]
    assert any("frame 30 of m30" in line and "energy" in line for line in stats["outliers"])
    assert any("frame 31 of m31" in line and "stress 500" in line for line in stats["outliers"])
    assert len(stats["outliers"]) == 2
    text = format_stats(stats)
    assert "32 frames, 64 atoms" in text
    assert "outliers: 2" in text


def test_stats_command_reads_an_extxyz(tmp_path, capsys):
    from ase.io import write

    from fastchgnet.cli import main
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.md.calculator import as_atoms

    atoms = [as_atoms(s) for s in varied_structures(3, seed=1, max_atoms=4)]
    for a in atoms:
        a.info["energy"] = -4.0 * len(a)
    write(str(tmp_path / "f.extxyz"), atoms)
    main(["data", "stats", str(tmp_path / "f.extxyz")])
    out = capsys.readouterr().out
    assert out.startswith("3 frames")
    assert "energy_per_atom eV/atom       3" in out


def test_stats_with_graphs_lists_frames_conversion_would_skip(tmp_path, capsys):
    good = _frame(0, -3.0)
    isolated = _frame(1, -3.0)
    isolated.structure.lattice = Lattice.cubic(20.0)  # atoms 17 Å apart: no bond within 6 Å
    overlapping = _frame(2, -3.0)
    overlapping.structure.replace(1, "Cl", [0.01, 0.0, 0.0])  # 0.03 Å from the Na
    frames = [good, isolated, overlapping]
    plain = dataset_stats(frames)
    assert plain["frames"] == 3
    assert plain["unusable"] == []
    checked = dataset_stats(frames, graphs=(6.0, 3.0))
    assert checked["frames"] == 1
    assert len(checked["unusable"]) == 2
    assert checked["unusable"][0].startswith("frame 1 of m1")
    assert checked["unusable"][1].startswith("frame 2 of m2")
    assert "unusable (conversion skips them): 2" in format_stats(checked)

    from ase.io import write

    from fastchgnet.cli import main
    from fastchgnet.md.calculator import as_atoms

    atoms = [as_atoms(f.structure) for f in frames]
    for a in atoms:
        a.info["energy"] = -3.0 * len(a)
    write(str(tmp_path / "f.extxyz"), atoms)
    main(["data", "stats", str(tmp_path / "f.extxyz")])
    assert capsys.readouterr().out.startswith("3 frames")
    main(["data", "stats", str(tmp_path / "f.extxyz"), "--graphs"])
    out = capsys.readouterr().out
    assert out.startswith("1 frames")
    assert "unusable (conversion skips them): 2" in out


def test_stats_does_not_hash_its_source(tmp_path, monkeypatch):
    """Reading frames computed the source's identity (a sha256 of up to 64 MiB) for the cache
    record at once; stats never records one, so it is now computed on first use only."""
    from ase.io import write

    import fastchgnet.data.sources as sources
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.md.calculator import as_atoms

    atoms = [as_atoms(s) for s in varied_structures(2, seed=1, max_atoms=4)]
    for a in atoms:
        a.info["energy"] = -4.0 * len(a)
    write(str(tmp_path / "f.extxyz"), atoms)
    calls = []
    real = sources.source_identity
    monkeypatch.setattr(sources, "source_identity", lambda path: calls.append(path) or real(path))
    frames = sources.read_frames(tmp_path / "f.extxyz")
    assert dataset_stats(frames)["frames"] == 2
    assert calls == []
    assert frames.origin["size"] == (tmp_path / "f.extxyz").stat().st_size
    assert len(calls) == 1
