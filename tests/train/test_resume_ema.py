"""A run stopped mid-epoch with EMA on resumes exactly: the EMA weights and the best score are
in every checkpoint, so model.pt, best_model.pt and metrics.csv equal an uninterrupted run's."""

from __future__ import annotations

import torch

from fastchgnet.model.chgnet import FastCHGNet
from fastchgnet.train.config import apply_overrides
from tests.train.helpers import small_cache, tiny_config

#: 36 train structures / batch 4 = 9 steps an epoch: step 13 is inside epoch 2
STOP_AT = 13


def _weights(path) -> dict[str, torch.Tensor]:
    return FastCHGNet.load(path).state_dict()


def test_a_mid_epoch_resume_with_ema_matches_the_uninterrupted_run(tmp_path):
    from fastchgnet.train.run import train

    cache = small_cache(tmp_path / "cache", n=48)
    settings = ("optim.epochs=3", "optim.ema_decay=0.9", "run.compile=off", "run.keep=1")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(tiny_config(cache, straight, *settings, "run.checkpoint_every=0"))
    config = tiny_config(cache, stopped, *settings, f"run.max_steps={STOP_AT}")
    train(config)
    assert not (stopped / "metrics.csv").read_text().count(",test,")
    train(apply_overrides(config, ["run.max_steps=0"]), resume=True)

    assert (straight / "metrics.csv").read_text() == (stopped / "metrics.csv").read_text()
    assert (straight / "best_model.txt").read_text() == (stopped / "best_model.txt").read_text()
    for name in ("model.pt", "best_model.pt", "model_last_weights.pt"):
        a, b = _weights(straight / name), _weights(stopped / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_ema_turned_on_at_a_resume_starts_from_the_resumed_weights(tmp_path):
    """A checkpoint without EMA state (EMA off before, or written before checkpoints held it):
    the average started from the freshly built model's random weights, so the first
    evaluations after the resume mixed them in. Now it starts from the resumed weights."""
    import torch

    from fastchgnet.train.config import load_config
    from fastchgnet.train.options import TrainingOptions

    config = load_config(None, ["optim.ema_decay=0.9"])
    model = torch.nn.Linear(3, 2)
    options = TrainingOptions(config, model, tmp_path, is_main=True)
    with torch.no_grad():  # the resume loads other weights into the same model
        model.weight.add_(1.0)
    options.resume({"ema": None, "tracker": options.tracker.state_dict()}, model)
    assert torch.equal(options.ema.shadow["weight"], model.weight)
    fresh = TrainingOptions(config, model, tmp_path, is_main=True)
    with torch.no_grad():
        model.weight.add_(1.0)
    fresh.resume(None, model)  # no state in the checkpoint, no options_state.pt
    assert torch.equal(fresh.ema.shadow["weight"], model.weight)
