"""launcher/finetune.py treats a run.out_dir that holds a run as launcher/train.py does: refused
in one line, unless --overwrite starts over there or --resume continues it."""

from __future__ import annotations

import fastchgnet.cli.finetune as cli_finetune
import fastchgnet.cli.train as cli_train
from fastchgnet.train.config import load_config
from fastchgnet.train.finetune import FinetuneReport


def _fake_finetune(monkeypatch) -> list:
    calls: list = []

    def record(config, eval_sources=(), resume=False):
        calls.append((config.run.out_dir, resume))
        return FinetuneReport({}, 0, 0)

    monkeypatch.setattr(cli_finetune, "finetune", record)
    return calls


def _old_run(out) -> None:
    (out / "checkpoints" / "step-00000030").mkdir(parents=True)
    (out / "metrics.csv").write_text("epoch,split\n1,val\n")
    (out / "model.pt").write_bytes(b"old model")


def test_finetune_refuses_a_folder_that_holds_a_run(tmp_path, monkeypatch, capsys):
    calls = _fake_finetune(monkeypatch)
    _old_run(tmp_path)
    assert cli_finetune.main(["--set", f"run.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"run.out_dir {tmp_path} holds a run (checkpoints, metrics.csv, model.pt)" in err
    assert calls == []
    assert (tmp_path / "model.pt").read_bytes() == b"old model"


def test_finetune_overwrite_starts_over(tmp_path, monkeypatch):
    calls = _fake_finetune(monkeypatch)
    _old_run(tmp_path)
    assert cli_finetune.main(["--overwrite", "--set", f"run.out_dir={tmp_path}"]) == 0
    assert calls == [(str(tmp_path), False)]
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "metrics.csv").exists()


def test_finetune_resume_continues_the_stored_config(tmp_path, monkeypatch):
    calls = _fake_finetune(monkeypatch)
    _old_run(tmp_path)
    stored = load_config("configs/finetune.toml").to_dict()  # the run it resumes
    stored["run"]["out_dir"] = str(tmp_path)
    monkeypatch.setattr(cli_train, "stored_config", lambda root: stored)
    assert cli_finetune.main(["--resume", "--set", f"run.out_dir={tmp_path}"]) == 0
    assert calls == [(str(tmp_path), True)]
    assert (tmp_path / "metrics.csv").is_file()


def test_finetune_resume_without_a_checkpoint_is_one_line(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    assert cli_finetune.main(["--resume", "--set", f"run.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"launcher/finetune.py: error: --resume: no checkpoint under {root}"


def test_finetune_resume_of_a_trained_run_without_its_report_writes_the_report(
    tmp_path, monkeypatch
):
    """A run stopped after its training but before its report: 'run already complete' left
    it without finetune-report.csv. Now the resume goes on to the report; with the report
    written, it is complete."""
    calls = _fake_finetune(monkeypatch)
    _old_run(tmp_path)
    stored = load_config("configs/finetune.toml").to_dict()  # the run it resumes
    stored["run"]["out_dir"] = str(tmp_path)
    monkeypatch.setattr(cli_train, "stored_config", lambda root: stored)
    monkeypatch.setattr(cli_train, "completed", lambda out, config: "12/12 epochs")
    assert cli_finetune.main(["--resume", "--set", f"run.out_dir={tmp_path}"]) == 0
    assert calls == [(str(tmp_path), True)]
    (tmp_path / "finetune-report.csv").write_text("target,before,after\n")
    assert cli_finetune.main(["--resume", "--set", f"run.out_dir={tmp_path}"]) == 0
    assert calls == [(str(tmp_path), True)]  # complete: nothing run


def test_the_fastchgnet_command_fine_tunes_as_the_launcher_does(tmp_path, monkeypatch, capsys):
    # `fastchgnet finetune` was "invalid choice": fine-tuning was launcher/finetune.py alone
    from fastchgnet.cli import main

    calls = _fake_finetune(monkeypatch)
    evals = ["--eval", "a.extxyz", "--eval", "b.extxyz"]
    assert main(["finetune", "--set", f"run.out_dir={tmp_path}", *evals]) == 0
    assert calls == [(str(tmp_path), False)]
    _old_run(tmp_path / "old")
    assert main(["finetune", "--set", f"run.out_dir={tmp_path / 'old'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fastchgnet finetune: error: run.out_dir {tmp_path / 'old'} holds")
