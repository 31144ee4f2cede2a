"""`fastchgnet train` and `fastchgnet data synth` parse their own options."""

from __future__ import annotations

import json

from fastchgnet.cli import build_parser, main


def test_fastchgnet_train_prints_the_config_with_overrides(capsys) -> None:
    assert main(["train", "--print-config", "--set", "optim.epochs=2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["epochs"] == 2
    assert printed["data"]["source"] == "quickstart"


def test_fastchgnet_train_rejects_an_unknown_key(capsys) -> None:
    assert main(["train", "--print-config", "--set", "optim.epoch=2"]) == 1
    assert "unknown key" in capsys.readouterr().err


def test_fastchgnet_data_synth_parses_its_options() -> None:
    args = build_parser().parse_args(["data", "synth", "-n", "5", "-o", "x.extxyz.gz"])
    assert (args.n, args.out, args.seed, args.max_atoms) == (5, "x.extxyz.gz", 0, 16)


def test_a_peer_lost_while_leaving_the_group_is_one_line_not_a_traceback(
    tmp_path, monkeypatch, capsys
) -> None:
    """Training done, a rank whose peer died before the closing barrier reports the peers and
    exits 1 instead of raising out of the CLI."""
    import fastchgnet.cli.train as cli_train
    from fastchgnet.train import collectives, run

    def lost() -> None:
        raise RuntimeError("Connection closed by peer [127.0.0.1]:29500\nmore detail")

    monkeypatch.setattr(run, "train", lambda config, resume=False: None)
    monkeypatch.setattr(collectives, "leave_process_group", lost)
    monkeypatch.setattr(cli_train, "_peers", lambda out, rank: f"rank {rank}: rank 1 is gone")
    code = main(["train", "--set", f"run.out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (
        "rank 0: rank 1 is gone (RuntimeError: Connection closed by peer [127.0.0.1]:29500)"
    )


def _fake_train(monkeypatch) -> list:
    from fastchgnet.train import run

    calls: list = []
    monkeypatch.setattr(run, "train", lambda config, resume=False: calls.append(resume))
    return calls


def _old_run(out) -> None:
    (out / "checkpoints" / "step-00000004").mkdir(parents=True)
    (out / "metrics.csv").write_text("epoch,split\n1,val\n")
    (out / "notes.txt").write_text("mine")


def test_a_new_run_into_a_folder_that_holds_one_is_refused(tmp_path, monkeypatch, capsys):
    calls = _fake_train(monkeypatch)
    _old_run(tmp_path)
    assert main(["train", "--set", f"run.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"run.out_dir {tmp_path} holds a run (checkpoints, metrics.csv)" in err
    assert calls == []
    assert (tmp_path / "metrics.csv").is_file()


def test_overwrite_removes_the_old_runs_checkpoints_and_metrics_only(tmp_path, monkeypatch):
    calls = _fake_train(monkeypatch)
    _old_run(tmp_path)
    assert main(["train", "--overwrite", "--set", f"run.out_dir={tmp_path}"]) == 0
    assert calls == [False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_values_out_of_range_are_refused_naming_the_key(capsys):
    for item, says in [
        ("optim.epochs=-1", "config optim.epochs=-1: must be at least 1"),
        ("optim.lr=-1", "config optim.lr=-1.0: must be >= 0"),
        ("optim.ema_decay=1", "config optim.ema_decay=1.0: must be in [0, 1)"),
        ("run.keep=0", "config run.keep=0: must be at least 1"),
    ]:
        assert main(["train", "--print-config", "--set", item]) == 1
        assert says in capsys.readouterr().err


def test_a_damaged_latest_json_is_named_on_resume(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text('{"name": "step-0000')
    assert main(["train", "--resume", "--set", f"run.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{tmp_path / 'checkpoints' / 'latest.json'}: damaged, it names no checkpoint" in err


def test_resume_says_step_folders_without_latest_json_are_not_checkpoints(tmp_path, capsys):
    (tmp_path / "checkpoints" / "step-00000002").mkdir(parents=True)
    assert main(["train", "--resume", "--set", f"run.out_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "step-00000002 without latest.json" in err
    assert "not a complete checkpoint" in err
