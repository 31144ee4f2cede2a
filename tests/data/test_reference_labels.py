"""``fastchgnet data synth``: labelled varied crystals, the same bytes from the same seed, and
labels our model with the reference weights reproduces."""

from __future__ import annotations

import numpy as np
import pytest

from fastchgnet.data.reference_labels import synth
from fastchgnet.data.sources import gunzip_ase_file, read_frames
from fastchgnet.train.loading import quickstart_path


@pytest.mark.slow
def test_synth_is_reproducible_from_its_seed_and_reads_back_with_all_labels(tmp_path) -> None:
    pytest.importorskip("chgnet")
    a = synth(6, tmp_path / "a.extxyz.gz", seed=3, max_atoms=8)
    b = synth(6, tmp_path / "b.extxyz.gz", seed=3, max_atoms=8)
    assert a.read_bytes() == b.read_bytes()
    frames = list(read_frames(tmp_path / "a.extxyz.gz"))
    assert len(frames) == 6
    assert len({f.material_id for f in frames}) == 6
    for frame in frames:
        n = len(frame.structure)
        assert np.isfinite(frame.energy_per_atom)
        assert frame.forces.shape == (n, 3)
        assert frame.stress.shape == (3, 3)
        assert frame.magmoms.shape == (n,)


def test_bundled_quickstart_set_is_small_and_present() -> None:
    path = quickstart_path()
    assert path.is_file()
    assert path.stat().st_size < 4_000_000  # 6000 crystals of up to 16 atoms: 3.7 MB


def test_reference_weights_reproduce_the_bundled_labels(model, tmp_path) -> None:
    plain = gunzip_ase_file(quickstart_path(), tmp_path)
    frames = [f for _, f in zip(range(12), read_frames(plain), strict=False)]
    predictions = model.predict_structure([f.structure for f in frames])
    for frame, p in zip(frames, predictions, strict=True):
        assert abs(float(p["e"]) - frame.energy_per_atom) < 1e-4  # eV/atom
        np.testing.assert_allclose(p["f"], frame.forces, atol=1e-4)  # eV/Å
        np.testing.assert_allclose(p["s"], frame.stress, atol=1e-3)  # GPa
