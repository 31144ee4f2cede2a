"""What configs/finetune.toml and README.md say about the VASP fine-tuning data is what a run
does: the +620.6 eV/atom step is skipped at conversion (not trained on), 38 frames train."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fastchgnet.train.cache_sources import resolve_cache
from fastchgnet.train.config import load_config
from fastchgnet.train.loading import make_splits
from tests.conftest import REFERENCE_DATA

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "finetune.toml"
RUN = REFERENCE_DATA / "parse-vasp-no-magmoms.zip"


@pytest.fixture(scope="module")
def split_counts(tmp_path_factory) -> tuple[int, int, list[dict]]:
    """(train frames, held-out frames, skipped.json) of the fine-tuning config's data."""
    if not RUN.is_file():
        pytest.skip(f"reference VASP run not found in {REFERENCE_DATA}")
    out = tmp_path_factory.mktemp("finetune-docs")
    data = replace(load_config(CONFIG).data, source=str(RUN), cache_dir=str(out / "cache"))
    cache = resolve_cache(data, out, (6.0, 3.0), is_main=True)
    splits = make_splits(cache, data)
    skipped = json.loads((cache / "skipped.json").read_text())
    return len(splits.train), len(splits.val) + len(splits.test), skipped


def test_the_bad_vasp_step_is_skipped_not_trained_on(split_counts) -> None:
    n_train, n_heldout, skipped = split_counts
    assert (n_train, n_heldout) == (38, 10)
    assert [entry["frame_id"] for entry in skipped] == ["parse-vasp-no-magmoms-1"]
    assert "620.6 eV/atom" in skipped[0]["reason"]


def test_config_and_readme_say_what_the_run_does(split_counts) -> None:
    n_train = split_counts[0]
    config_text = CONFIG.read_text()
    assert f"# {n_train} training frames" in config_text
    assert f"drifting on {n_train} frames" in config_text
    assert "never reaches training" in config_text
    readme = " ".join(ROOT.joinpath("README.md").read_text().split())
    assert "it stays in the training frames" not in readme
    assert "the Huber loss bounds its pull" not in readme
    assert f"train ({n_train}: the second step, at +620.6 eV/atom" in readme
