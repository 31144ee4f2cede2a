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
