"""A run folder's logs belong to one run: --overwrite clears the old run's outputs (the data
cache stays), --resume drops the rows it will write again, and --resume on a complete run
changes nothing."""

from __future__ import annotations

import csv
import json

import fastchgnet.train.run as train_run
from fastchgnet.cli import main
from fastchgnet.train.checkpoint import load_checkpoint
from fastchgnet.train.config import apply_overrides
from fastchgnet.train.outputs import trim_logs
from fastchgnet.train.run import train
from tests.train.helpers import small_cache, tiny_config


def _rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_overwrite_removes_the_old_runs_outputs_and_keeps_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(train_run, "train", lambda config, resume=False: None)
    for name in ("train_log.csv", "metrics.csv", "best_model.pt", "summary.json", "notes.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / "checkpoints" / "step-00000009").mkdir(parents=True)
    (tmp_path / "cache").mkdir()
    assert main(["train", "--overwrite", "--set", f"run.out_dir={tmp_path}"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes.txt"]


def test_a_leftover_train_log_alone_asks_for_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_run, "train", lambda config, resume=False: None)
    (tmp_path / "train_log.csv").write_text("global_step,epoch,loss\n1,1,0.5\n")
    assert main(["train", "--set", f"run.out_dir={tmp_path}"]) == 1
    assert "holds a run (train_log.csv)" in capsys.readouterr().err


def test_trim_logs_drops_the_rows_past_the_checkpoint_and_its_test_row(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("global_step,epoch,loss\n" + "".join(f"{s},1,0.{s}\n" for s in range(1, 8)))
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,split,global_step\n1,val,3\n2,val,6\n2,test,6\n")
    trim_logs(tmp_path, 6)
    assert [r["global_step"] for r in _rows(log)] == ["1", "2", "3", "4", "5", "6"]
    assert metrics.read_text().splitlines() == ["epoch,split,global_step", "1,val,3", "2,val,6"]
    trim_logs(tmp_path, 4)
    assert [r["global_step"] for r in _rows(log)] == ["1", "2", "3", "4"]
    assert metrics.read_text().splitlines() == ["epoch,split,global_step", "1,val,3"]
    trim_logs(tmp_path, 2)
    assert metrics.read_text().splitlines() == ["epoch,split,global_step"]


def _point_latest_at(root, name: str) -> None:
    """Make ``latest.json`` name the older checkpoint ``name``, as a run killed right after
    writing it (with log rows past it) would have left it."""
    main_payload, _ = load_checkpoint(root / name, 0, 1)
    pointer = {"name": name, **main_payload["progress"], "world_size": 1}
    pointer["config"] = main_payload["config"]
    (root / "latest.json").write_text(json.dumps(pointer))


def _straight_and_stopped(tmp_path):
    """(the config of a run stopped at step 13 with checkpoints every 4 steps, its folder,
    the folder of the same run trained straight through), both run."""
    cache = small_cache(tmp_path / "cache", n=48)
    settings = ("optim.epochs=2", "run.log_every=1", "run.compile=off", "run.keep=10")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(cache, straight, *settings))
    config = tiny_config(cache, resumed, *settings, "run.checkpoint_every=4", "run.max_steps=13")
    train(config)
    return config, resumed, straight


def test_a_resume_from_an_older_checkpoint_writes_each_log_row_once(tmp_path):
    config, resumed, straight = _straight_and_stopped(tmp_path)
    _point_latest_at(resumed / "checkpoints", "step-00000008")  # epoch 1 ends at step 9
    train(apply_overrides(config, ["run.max_steps=0"]), resume=True)

    steps = [int(r["global_step"]) for r in _rows(resumed / "train_log.csv")]
    assert steps == list(range(1, steps[-1] + 1))
    assert (straight / "metrics.csv").read_text() == (resumed / "metrics.csv").read_text()


def test_resume_of_a_complete_run_says_so_and_changes_nothing(tmp_path, capsys):
    cache = small_cache(tmp_path / "cache", n=24)
    out = tmp_path / "run"
    train(tiny_config(cache, out, "optim.epochs=2", "run.compile=off"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", "--set", f"run.out_dir={out}"]) == 0
    assert capsys.readouterr().out.strip() == "run already complete (2/2 epochs): nothing to do"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_the_logged_learning_rate_is_the_one_each_step_used(tmp_path):
    # the rows showed the next step's rate: 2/3, 1, 1 x lr for a warm-up of 3 steps
    cache = small_cache(tmp_path / "cache", n=24)
    settings = ("optim.scheduler=constant", "optim.warmup_steps=3", "optim.lr=0.003")
    config = tiny_config(cache, tmp_path / "run", *settings, "run.log_every=1", "data.batch_size=2")
    train(config)
    with open(tmp_path / "run" / "train_log.csv") as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle) if row["lr"]]
    assert rates[:4] == [0.001, 0.002, 0.003, 0.003]


def test_a_resume_whose_newest_checkpoint_is_damaged_continues_from_the_one_before(
    tmp_path, capsys
):
    # it stopped with a clear line, but only hand-editing latest.json reached the older one
    config, resumed, straight = _straight_and_stopped(tmp_path)
    root = resumed / "checkpoints"
    newest = json.loads((root / "latest.json").read_text())["name"]
    (rank_0,) = (root / newest).glob("rank-*")
    rank_0.write_bytes(rank_0.read_bytes()[:1000])  # truncated, as by a full disk
    capsys.readouterr()
    train(apply_overrides(config, ["run.max_steps=0"]), resume=True)
    out = capsys.readouterr().out
    assert "resuming from the checkpoint before it, step-00000012" in out
    assert (straight / "metrics.csv").read_text() == (resumed / "metrics.csv").read_text()
