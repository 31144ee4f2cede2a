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
