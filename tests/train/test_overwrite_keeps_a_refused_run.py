"""``--overwrite`` removes the old run only once the new one has passed its checks and starts
training: it deleted the old outputs first, so a refused run (``--overwrite --set
data.source=/missing.extxyz``) destroyed the old one and left only its cache and config."""

from __future__ import annotations

import pytest

from fastchgnet.cli.train import main
from fastchgnet.train import outputs
from tests.train.helpers import TINY_ARCHITECTURE, small_cache

OLD = {"metrics.csv": "epoch,split\n1,val\n", "model.pt": "old model", "summary.json": "{}"}


def _old_run(out) -> None:
    (out / "checkpoints" / "step-00000999").mkdir(parents=True)
    for name, text in OLD.items():
        (out / name).write_text(text)


def _kept(out) -> bool:
    same = all((out / name).read_text() == text for name, text in OLD.items())
    return same and (out / "checkpoints" / "step-00000999").is_dir()


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("data.source=/missing.extxyz", "/missing.extxyz"),
        ('model.freeze=["no_such_part"]', "'no_such_part' matches no parameter"),
    ],
)
def test_a_refused_overwrite_leaves_the_old_run_as_it_was(tmp_path, capsys, override, says):
    _old_run(tmp_path)
    assert main(["--overwrite", "--set", f"run.out_dir={tmp_path}", "--set", override]) == 1
    err = capsys.readouterr().err.strip()
    assert says in err
    assert "\n" not in err
    assert _kept(tmp_path)
    assert not (tmp_path / getattr(outputs, "PREVIOUS", "-")).exists()


def test_an_overwrite_that_trains_replaces_the_old_run(tmp_path):
    cache = small_cache(tmp_path / "cache", n=16)
    out = tmp_path / "run"
    out.mkdir()
    _old_run(out)
    settings = [
        f"data.source={cache}",
        "data.batch_size=4",
        "data.split=[0.75,0.125,0.125]",
        f"model.architecture={TINY_ARCHITECTURE}",
        f"run.out_dir={out}",
        "run.progress=lines",
        "run.plots=false",
        "run.compile=off",
        "optim.epochs=1",
    ]
    assert main(["--overwrite", *(f"--set={s}" for s in settings)]) == 0
    assert not (out / outputs.PREVIOUS).exists()
    assert not (out / "checkpoints" / "step-00000999").exists()
    assert (out / "metrics.csv").read_text() != OLD["metrics.csv"]


def test_an_old_run_set_aside_by_a_killed_overwrite_comes_back(tmp_path):
    _old_run(tmp_path)
    outputs.start_over(tmp_path, overwrite=True, remove=True)  # then killed before training
    assert (tmp_path / outputs.PREVIOUS).is_dir()
    assert not (tmp_path / "metrics.csv").exists()
    with pytest.raises(ValueError, match="holds a run"):
        outputs.start_over(tmp_path, overwrite=False, remove=True)
    assert _kept(tmp_path)
