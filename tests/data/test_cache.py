"""Graph cache: roundtrip, skipped frames, resume, corruption, CLI."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from fastchgnet.cli import main
from fastchgnet.data.cache import CacheError, GraphDataset
from fastchgnet.data.convert import convert
from fastchgnet.data.frame import Frame
from fastchgnet.data.graph import build_graph
from fastchgnet.data.sources import from_structures, read_mptrj
from tests.data.frames import isolated_atom, mptrj_record, rock_salt, symmetric, write_mptrj

GRAPH_FIELDS = (
    "atomic_numbers",
    "frac_coords",
    "lattice",
    "bond_atoms",
    "bond_images",
    "angle_edges",
)


def good_frames(n: int) -> list[Frame]:
    structures = [rock_salt(k, 5.4 + 0.05 * k) for k in range(n)]
    rng = np.random.default_rng(0)
    return list(
        from_structures(
            structures,
            energies=[float(e) for e in rng.normal(size=n)],
            forces=[rng.normal(size=(8, 3)) for _ in range(n)],
            stresses=[symmetric(rng.normal(size=(3, 3))) if k % 2 else None for k in range(n)],
            magmoms=None,
        )
    )


def assert_same_graph(graph, reference):
    for field in GRAPH_FIELDS:
        np.testing.assert_array_equal(getattr(graph, field), getattr(reference, field), field)
        assert getattr(graph, field).dtype == getattr(reference, field).dtype


def test_cache_roundtrip_equals_build_graph_and_labels(tmp_path):
    frames = good_frames(5)
    summary = convert(frames, tmp_path / "c", workers=1, shard_size=2, progress=False)
    assert (summary.n_structures, summary.n_skipped, summary.shards_built) == (5, 0, 3)
    dataset = GraphDataset(tmp_path / "c")
    assert len(dataset) == 5
    for k, frame in enumerate(frames):
        graph, labels = dataset[k]
        reference = build_graph(frame.structure)
        assert_same_graph(graph, reference)
        np.testing.assert_array_equal(
            dataset.sizes[k], [reference.n_atoms, reference.n_bonds, reference.n_angles]
        )
        assert labels.energy_per_atom == frame.energy_per_atom
        np.testing.assert_array_equal(labels.forces, frame.forces)
        assert labels.magmoms is None
        if frame.stress is None:
            assert labels.stress is None
        else:
            np.testing.assert_array_equal(labels.stress, frame.stress)
        assert (labels.material_id, labels.frame_id) == (frame.material_id, frame.frame_id)
    assert dataset.material_ids.tolist() == [f.material_id for f in frames]


def test_parallel_workers_write_the_same_cache(tmp_path):
    frames = good_frames(6)
    convert(frames, tmp_path / "one", workers=1, shard_size=4, progress=False)
    convert(frames, tmp_path / "two", workers=2, shard_size=4, progress=False)
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert one == two


def test_bad_frames_are_skipped_and_listed_with_reasons(tmp_path, capsys):
    good = good_frames(2)
    bad = [
        Frame(isolated_atom(), material_id="mp-iso", frame_id="iso-0"),
        Frame(rock_salt(0), energy_per_atom=float("nan"), material_id="mp-nan", frame_id="nan-0"),
        Frame(rock_salt(0, species=("Am", "Cl")), material_id="mp-am", frame_id="am-0"),
        Frame(rock_salt(0), forces=np.zeros((3, 3)), material_id="mp-shape", frame_id="shape-0"),
    ]
    convert([good[0], *bad, good[1]], tmp_path / "c", workers=1, shard_size=3)
    skipped = json.loads((tmp_path / "c" / "skipped.json").read_text())
    reasons = {entry["frame_id"]: entry["reason"] for entry in skipped}
    assert set(reasons) == {"iso-0", "nan-0", "am-0", "shape-0"}
    assert "isolated atom" in reasons["iso-0"]
    assert "energy_per_atom is nan" in reasons["nan-0"]
    assert "Z=[95]" in reasons["am-0"]
    assert "forces has shape (3, 3)" in reasons["shape-0"]
    assert {entry["material_id"] for entry in skipped} == {"mp-iso", "mp-nan", "mp-am", "mp-shape"}
    assert "skipped 4 frame(s)" in capsys.readouterr().out
    assert len(GraphDataset(tmp_path / "c")) == 2


def interrupted(frames, after):
    for k, frame in enumerate(frames):
        if k == after:
            raise KeyboardInterrupt("simulated interruption")
        yield frame


def test_resume_keeps_finished_shards_and_ignores_stale_temp(tmp_path):
    frames = good_frames(7)
    cache = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        convert(interrupted(frames, 5), cache, workers=1, shard_size=2, progress=False)
    assert not (cache / "manifest.json").exists()
    with pytest.raises(CacheError, match="did not finish"):
        GraphDataset(cache)
    stale = cache / ".tmp-shard-00002"
    stale.mkdir(exist_ok=True)
    (stale / "forces.part").write_bytes(b"half a shard")
    finished = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*/*.npy")}
    summary = convert(frames, cache, workers=1, shard_size=2, progress=False)
    assert (summary.shards_kept, summary.shards_built) == (2, 2)
    assert not stale.exists()
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-0000[01]/*.npy")}.keys() <= (
        finished.keys()
    )
    fresh = tmp_path / "fresh"
    convert(frames, fresh, workers=1, shard_size=2, progress=False)
    assert json.loads((cache / "manifest.json").read_text()) == json.loads(
        (fresh / "manifest.json").read_text()
    )


def test_corrupted_shard_is_detected_with_a_clear_error(tmp_path):
    convert(good_frames(4), tmp_path / "c", workers=1, shard_size=2, progress=False)
    target = tmp_path / "c" / "shard-00001" / "forces.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard-00001: forces\.npy has sha256"):
        GraphDataset(tmp_path / "c")


def test_rerun_with_other_settings_is_refused(tmp_path):
    convert(good_frames(2), tmp_path / "c", workers=1, shard_size=2, progress=False)
    with pytest.raises(CacheError, match="built with settings"):
        convert(good_frames(2), tmp_path / "c", bond_cutoff=2.5, workers=1, progress=False)


def test_dataset_pickles_without_its_memory_maps(tmp_path):
    convert(good_frames(2), tmp_path / "c", workers=1, shard_size=2, progress=False)
    dataset = GraphDataset(tmp_path / "c")
    dataset[1]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._open == {}
    assert_same_graph(clone[1][0], dataset[1][0])
    with pytest.raises(IndexError):
        dataset[2]


def test_command_line_converts_an_mptrj_file(tmp_path):
    records = {"mp-1": {f"mp-1-{k}": mptrj_record(rock_salt(k), k) for k in range(3)}}
    path = write_mptrj(tmp_path / "mptrj.json", records)
    arguments = [str(path), "-o", str(tmp_path / "c"), "--workers", "1", "--shard-size", "2"]
    assert main(["data", "convert", *arguments]) == 0
    dataset = GraphDataset(tmp_path / "c")
    frames = list(read_mptrj(path))
    assert len(dataset) == 3
    assert dataset[2][1].energy_per_atom == pytest.approx(frames[2].energy_per_atom)
    np.testing.assert_allclose(dataset[2][1].stress, frames[2].stress)
