"""convert prints how many frames have each label and warns when none has an energy; training
on a cache without energies stops in one line naming the cache, before the composition fit."""

from __future__ import annotations

import pytest

from fastchgnet.cli import main
from fastchgnet.data.convert import convert
from fastchgnet.data.sources import read_frames
from fastchgnet.train.run import train
from tests.data.frames import mptrj_record, rock_salt, write_mptrj
from tests.train.helpers import tiny_config


def _energyless_mptrj(path):
    materials = {}
    for m in range(4):
        records = {}
        for f in range(3):
            record = mptrj_record(rock_salt(10 * m + f), seed=f)
            del record["corrected_total_energy"]
            records[f"mp-{m}-{f}"] = record
        materials[f"mp-{m}"] = records
    return write_mptrj(path, materials)


def test_convert_prints_label_coverage_and_warns_without_energies(tmp_path, capsys):
    source = _energyless_mptrj(tmp_path / "noe.json")
    assert main(["data", "convert", str(source), "-o", str(tmp_path / "c"), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "labels: energy 0/12, forces 12/12, stress 12/12, magmoms 12/12 frames" in printed
    assert "WARNING: no frame in" in printed
    assert "has an energy label" in printed


def test_training_without_energy_labels_stops_naming_the_cache(tmp_path):
    cache = tmp_path / "c"
    convert(read_frames(_energyless_mptrj(tmp_path / "noe.json")), cache, workers=1,
            progress=False)  # fmt: skip
    config = tiny_config(cache, tmp_path / "run", "optim.epochs=1", "run.compile=off",
                         "data.split_by=frame_tail")  # fmt: skip
    with pytest.raises(ValueError, match=r"c: no training structure has an energy label \("):
        train(config)


def test_training_without_energies_and_without_a_composition_fit_warns_and_trains(tmp_path, capsys):
    """Forces alone can train a model whose element energies are not refitted (a fine-tune):
    a warning, not an error."""
    cache = tmp_path / "c"
    convert(read_frames(_energyless_mptrj(tmp_path / "noe.json")), cache, workers=1,
            progress=False)  # fmt: skip
    config = tiny_config(cache, tmp_path / "run", "optim.epochs=1", "run.compile=off",
                         "data.split_by=frame_tail", "model.fit_composition=no")  # fmt: skip
    train(config)
    assert "warning: " in capsys.readouterr().out
    assert (tmp_path / "run" / "model.pt").is_file()
