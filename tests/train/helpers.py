"""Small labelled data sets and configs for the training tests."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from fastchgnet.data.convert import convert
from fastchgnet.data.sources import gunzip_ase_file, read_frames
from fastchgnet.train.config import TrainConfig, apply_overrides
from fastchgnet.train.loading import quickstart_path

#: A model small enough for a training step in a few tens of ms on one CPU thread.
TINY_ARCHITECTURE = (
    '{"atom_fea_dim": 16, "bond_fea_dim": 16, "angle_fea_dim": 16, "atom_conv_hidden_dim": 16,'
    ' "bond_conv_hidden_dim": 16, "mlp_hidden_dims": [16], "num_radial": 7, "num_angular": 7,'
    ' "n_conv": 2}'
)


def small_cache(folder: Path, n: int = 48) -> Path:
    """A graph cache of the first ``n`` bundled quick-start structures."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = gunzip_ase_file(quickstart_path(), folder.parent)
    frames = (frame for _, frame in zip(range(n), read_frames(plain), strict=False))
    convert(frames, folder, workers=1, progress=False)
    return folder


def tiny_settings(cache: Path, out_dir: Path, *extra: str) -> list[str]:
    """The overrides (``--set`` values) of a fast run on ``cache``: tiny model, batch 4, lines
    not bars, no plots; then ``extra``."""
    return [
        f"data.source={cache}",
        "data.batch_size=4",
        "data.split=[0.75, 0.125, 0.125]",
        f"model.architecture={TINY_ARCHITECTURE}",
        f"run.out_dir={out_dir}",
        "run.progress=lines",
        "run.plots=false",
        "optim.lr=0.001",
        *extra,
    ]


def tiny_config(cache: Path, out_dir: Path, *extra: str) -> TrainConfig:
    """The config of ``tiny_settings``."""
    return apply_overrides(TrainConfig(), tiny_settings(cache, out_dir, *extra))


def random_labels_like(n_atoms: list[int], seed: int = 0) -> list[object]:
    """Random per-structure labels (energy, forces, stress, magmoms) for ``n_atoms``."""
    from fastchgnet.data.cache import Labels

    rng = np.random.default_rng(seed)
    return [
        Labels(
            energy_per_atom=float(rng.normal()),
            forces=rng.normal(size=(n, 3)),
            stress=rng.normal(size=(3, 3)),
            magmoms=rng.random(n),
            material_id=f"m{k}",
            frame_id=str(k),
        )
        for k, n in enumerate(n_atoms)
    ]


def step_losses(out_dir: Path) -> list[float]:
    """The training loss of every logged step of the run in ``out_dir`` (its train_log.csv)."""
    with (out_dir / "train_log.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a test's MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_one_rank(script: str) -> str:
    """stdout of ``python -c script`` as rank 0 of a one-rank group (the variables DeepSpeed's
    launcher sets; a free port), the repository on the path; fails the test if it fails."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
