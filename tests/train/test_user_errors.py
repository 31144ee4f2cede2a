"""User errors end in one line on stderr, in training and fine-tuning alike: a bad key, a
missing file, a batch size below 1 (which divided by zero in the compile decision)."""

from __future__ import annotations

import pytest

from fastchgnet.cli.finetune import main as finetune_main
from fastchgnet.cli.train import main as train_main


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_finetune_names_an_unknown_key_in_one_line(capsys):
    assert finetune_main(["--set", "optim.lrr=1"]) == 1
    assert "unknown key 'optim.lrr'" in _one_line(capsys)


def test_finetune_names_a_missing_eval_source_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--eval", str(tmp_path / "nonexist.zip"), "--set", f"run.out_dir={out}"]
    assert finetune_main(args) == 1
    assert f"--eval {tmp_path / 'nonexist.zip'}: no such file" in _one_line(capsys)
    assert not (out / "cache").exists()


def test_finetune_names_a_missing_data_source_in_one_line(tmp_path, capsys):
    source = tmp_path / "nonexist"
    args = ["--set", f"data.source={source}", "--set", f"run.out_dir={tmp_path / 'run'}"]
    assert finetune_main(args) == 1
    assert f"{source}: no such file or directory" in _one_line(capsys)


@pytest.mark.parametrize("main", [train_main, finetune_main], ids=["train", "finetune"])
def test_a_batch_size_below_one_is_named_not_a_zero_division(main, tmp_path, capsys):
    args = ["--set", "data.batch_size=0", "--set", f"run.out_dir={tmp_path / 'run'}"]
    assert main(args) == 1
    assert "config data.batch_size=0: must be at least 1" in _one_line(capsys)


@pytest.mark.parametrize(
    ("rank", "local_rank", "printed"),
    [("0", "0", True), ("1", "1", False), ("1", "0", True)],
    ids=["rank 0", "another rank on rank 0's node", "a rank on another node"],
)
def test_a_config_error_under_a_launcher_is_printed_once_per_set_of_files(
    monkeypatch, capsys, rank, local_rank, printed
):
    # deepspeed --num_gpus 2 printed "unknown key" twice: every rank reads the same arguments
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert train_main(["--set", "optim.lrr=1"]) == 1
    err = capsys.readouterr().err
    assert ("unknown key 'optim.lrr'" in err) is printed, err


def test_a_diverged_run_ends_in_one_line_that_says_how_to_go_on(tmp_path, capsys):
    # it ended in a 30-line traceback of NonFiniteLossError
    from tests.train.helpers import TINY_ARCHITECTURE, small_cache

    cache = small_cache(tmp_path / "cache", n=24)
    settings = [
        f"data.source={cache}",
        f"model.architecture={TINY_ARCHITECTURE}",
        f"run.out_dir={tmp_path / 'run'}",
        "data.batch_size=2",
        "optim.lr=1e12",
        "run.max_bad_steps=2",
        "run.log_every=1",
        "run.progress=lines",
        "run.plots=false",
    ]
    assert train_main([part for s in settings for part in ("--set", s)]) == 1
    line = _one_line(capsys)
    assert "non-finite losses in a row" in line
    assert "no checkpoint was written before it" in line, line  # the first steps diverged


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("zero1", "run.sync_debug: "),
        ("missing", "run.deepspeed_config: no such file"),
        ("not json", "not JSON (Expecting"),
    ],
)
def test_a_deepspeed_config_that_cannot_serve_is_named_before_any_work(
    config, expected, tmp_path, monkeypatch, capsys
):
    # ZeRO 1's own step reads the host (its overflow flag, overlap_comm's synchronize): the
    # sync check stopped a GPU run's first checked step there; a missing or broken JSON was
    # read only after the data was converted, and a broken one said "Expecting value: line 1"
    from fastchgnet.train import run
    from fastchgnet.train.engine import DEFAULT_DEEPSPEED_JSON

    def prepare_data(*args, **kwargs):
        raise AssertionError("the data was prepared before the DeepSpeed config was checked")

    monkeypatch.setattr(run, "prepare_data", prepare_data)

    path = {
        "zero1": DEFAULT_DEEPSPEED_JSON.with_name("deepspeed_zero1.json"),
        "missing": tmp_path / "nonexist.json",
        "not json": tmp_path / "broken.json",
    }[config]
    (tmp_path / "broken.json").write_text('{"zero_optimization": {"stage": 0}')
    out = tmp_path / "run"
    settings = [
        "run.engine=deepspeed",
        "run.sync_debug=true",
        f"run.deepspeed_config={path}",
        f"run.out_dir={out}",
    ]
    assert train_main([part for s in settings for part in ("--set", s)]) == 1
    line = _one_line(capsys)
    assert expected in line, line
    assert str(path) in line, line
