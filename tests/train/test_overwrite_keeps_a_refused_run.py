"""``--overwrite`` removes the old run only once the new one has passed its checks and starts
training: it deleted the old outputs first, so a refused run (``--overwrite --set
data.source=/missing.extxyz``) destroyed the old one and left only its cache and config."""

from __future__ import annotations

import pytest

from fastchgnet.cli.train import main
from fastchgnet.train import outputs
from tests.train.helpers import small_cache, tiny_settings

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
    settings = tiny_settings(cache, out, "run.compile=off", "optim.epochs=1")
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


def test_an_aside_cut_short_by_a_signal_comes_back_whole(tmp_path):
    """A signal inside the moves left the checkpoints aside and metrics.csv in place; the next
    start took metrics.csv for the new run's and deleted the aside, checkpoints and all."""
    _old_run(tmp_path)
    moving = tmp_path / outputs.MOVING
    moving.mkdir()
    (tmp_path / "checkpoints").rename(moving / "checkpoints")  # then the signal
    with pytest.raises(ValueError, match="holds a run"):
        outputs.start_over(tmp_path, overwrite=False, remove=True)
    assert _kept(tmp_path)
    assert not moving.exists()


def test_a_rank_that_sees_only_an_aside_refuses_as_the_main_rank_does(tmp_path):
    """Another rank looked before the main rank put an aside back, found no run files and
    went on to wait in the first collective while the main rank refused."""
    _old_run(tmp_path)
    outputs.start_over(tmp_path, overwrite=True, remove=True)  # then killed before training
    with pytest.raises(ValueError, match="holds a run"):
        outputs.start_over(tmp_path, overwrite=False, remove=False)


def test_a_resume_finds_the_run_a_killed_overwrite_set_aside(tmp_path, capsys):
    """--resume said there was no checkpoint while the run sat in .overwritten-run/."""
    _old_run(tmp_path)
    outputs.start_over(tmp_path, overwrite=True, remove=True)  # then killed before training
    main(["--resume", "--set", f"run.out_dir={tmp_path}"])
    assert _kept(tmp_path)
    assert not (tmp_path / outputs.PREVIOUS).exists()


def test_a_rank_stopped_by_sigterm_under_a_launcher_puts_the_old_run_back(tmp_path, monkeypatch):
    """Under DeepSpeed a SIGTERM ends a rank through os._exit, which skipped the command's own
    restore: an --overwrite stopped during its data conversion left the old run aside."""
    import signal

    from fastchgnet.cli import train as cli_train

    _old_run(tmp_path)
    outputs.start_over(tmp_path, overwrite=True, remove=True)  # then the launcher's SIGTERM
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli_train.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    try:
        cli_train._report_on_signal(tmp_path, rank=0)
        with pytest.raises(SystemExit) as ended:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ended.value.code == 143
    assert _kept(tmp_path)
    assert not (tmp_path / outputs.PREVIOUS).exists()
