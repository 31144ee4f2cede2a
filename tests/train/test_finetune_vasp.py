"""Fine-tuning CHGNet 0.3.0 on the real VASP relaxation in ../shared/data/reference: trained on
the first 80 % of the ionic steps, evaluated on the contiguous last 20 % before and after."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastchgnet.train.config import load_config
from tests.conftest import REFERENCE_DATA

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "finetune.toml"
RUN = REFERENCE_DATA / "parse-vasp-no-magmoms.zip"
EVAL_ONLY = REFERENCE_DATA / "parse-vasp-with-magmoms.zip"


def test_finetune_config_holds_out_the_tail_of_the_reference_relaxation() -> None:
    config = load_config(CONFIG)
    assert config.data.split_by == "frame_tail"
    assert config.data.split == (0.8, 0.1, 0.1)
    assert Path(config.data.source).name == RUN.name
    assert config.model.init == "reference:0.3.0"


@pytest.mark.slow
def test_finetuning_on_the_vasp_run_lowers_held_out_energy_and_force_mae(tmp_path) -> None:
    pytest.importorskip("chgnet")
    if not RUN.is_file() or not EVAL_ONLY.is_file():
        pytest.skip(f"reference VASP runs not found in {REFERENCE_DATA}")
    from fastchgnet.train.finetune import finetune

    config = load_config(
        CONFIG,
        [
            f"data.source={RUN}",
            f"run.out_dir={tmp_path / 'run'}",
            "optim.epochs=4",
            "run.log_every=1000",
        ],
    )
    report = finetune(config, (str(EVAL_ONLY),))
    # 49 ionic steps; frame parse-vasp-no-magmoms-1, at +620.6 eV/atom (beyond the 50 eV/atom
    # plausibility limit: not physics), is skipped and listed in skipped.json, as by every source
    assert (report.n_train, report.n_heldout) == (38, 10)
    before, after = report.rows["held-out before"], report.rows["held-out after"]
    assert "magmoms_mae" not in before  # the relaxation has no magnetic moments
    assert after["energy_mae"] < 0.8 * before["energy_mae"]
    assert after["forces_mae"] < 0.9 * before["forces_mae"]
    other = report.rows["parse-vasp-with-magmoms before"]
    assert {"energy_mae", "forces_mae", "stress_mae", "magmoms_mae"} <= set(other)
    assert (tmp_path / "run" / "finetune-report.csv").is_file()


def test_finetune_command_line_takes_config_overrides_and_eval_sources() -> None:
    from fastchgnet.cli.finetune import build_parser

    args = build_parser().parse_args(
        ["--set", "optim.epochs=2", "--eval", "a.zip", "--eval", "b.extxyz"]
    )
    assert args.config == "configs/finetune.toml"
    assert args.overrides == ["optim.epochs=2"]
    assert args.eval_sources == ["a.zip", "b.extxyz"]
