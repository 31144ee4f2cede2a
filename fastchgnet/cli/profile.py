"""``fastchgnet profile``: aten operators and CUDA kernels per training step, side by side.

Runs one batch of varied crystals through a training step (forward e/f/s/m, Huber loss,
backward, Adam) of the reference chgnet package and our one training step
(``train.step.TrainStep``, eager and captured) on ``--device`` (CUDA where present), and
prints the counts per step. Each step is warmed up ``WARMUP`` times first, so the captured
step counts a replay of its compiled graph (a CUDA graph on a GPU), not the call that
records it. On CUDA the CUDA kernels per step are counted too, and the Nsight Systems
commands for a GPU timeline printed (``NSYS``); on a CPU neither.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import numpy as np
import torch

NSYS = (
    "nsys profile --trace=cuda,nvtx --capture-range=cudaProfilerApi -o fastchgnet_steps "
    "python launcher/train.py --set run.profile_steps=[20,30]\n"
    "nsys stats --report nvtx_sum,cuda_gpu_kern_sum fastchgnet_steps.nsys-rep"
)
#: Steps run before counting (the first compiles; CUDA graphs record, then replay).
WARMUP = 3


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the profile command (added to ``parser`` when given)."""
    parser = parser or argparse.ArgumentParser(prog="fastchgnet profile", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-atoms", type=int, default=108)
    parser.add_argument("--mode", choices=["conservative", "direct"], default="conservative")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled model")
    parser.add_argument("--no-reference", action="store_true", help="skip the chgnet package")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where the steps run (default: cuda where available): CUDA kernels are counted "
        "there, aten operators on either",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, float]:
    """Print the counts per training step of each implementation; return CUDA kernels per
    step (``--device cuda``) or aten operators per step (``--device cpu``) by name."""
    from fastchgnet import FastCHGNet
    from fastchgnet.data.capacity import tight_capacity
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.padding import collate_padded
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.model.device import check_device
    from fastchgnet.profiling.counters import count_ops
    from fastchgnet.train.step import standalone_step

    if args.batch_size < 1 or args.max_atoms < 1:
        raise ValueError(
            f"--batch-size {args.batch_size} and --max-atoms {args.max_atoms}: need at least 1"
        )
    device = check_device(args.device, "--device", kinds=("cpu", "cuda"))

    structures = varied_structures(args.batch_size, seed=7, max_atoms=args.max_atoms)
    rng = np.random.default_rng(0)
    labels = [
        dict(
            e=float(rng.normal(-5, 1)),
            f=rng.normal(0, 0.5, (len(s), 3)),
            s=rng.normal(0, 1, (3, 3)),
            m=np.abs(rng.normal(0, 1, len(s))),
        )
        for s in structures
    ]
    steps: dict[str, object] = {}
    if not args.no_reference:
        steps["reference chgnet"] = _reference_step(structures, labels, device)
    graphs = [build_graph(s) for s in structures]
    capacity = tight_capacity([graphs])
    ours = [_Labels(x) for x in labels]
    batch, label_batch = collate_padded(graphs, capacity, ours)
    batch, label_batch = batch.to(device), label_batch.to(device)
    if args.mode == "conservative":
        model = FastCHGNet.from_reference("0.3.0")
    else:
        model = FastCHGNet(forces="direct", coupled_updates=False)
    model.to(device).train()
    for kind in ["eager"] + ([] if args.no_compile else ["compiled"]):
        step = standalone_step(model, compiled=kind == "compiled")
        steps[f"fastchgnet {args.mode} {kind}"] = lambda s=step: s(batch, label_batch)
    counts = {}
    print(
        f"training step, batch of {args.batch_size} varied crystals "
        f"({sum(len(s) for s in structures)} atoms)"
    )
    print(f"on {device}; counts per step after {WARMUP} warm-up steps")
    on_cuda = device.type == "cuda"
    kernels = f" {'CUDA kernels':>13s}" if on_cuda else ""
    print(f"{'':34s} {'aten ops':>9s} {'top-level':>10s}{kernels}")
    for name, step in steps.items():
        for _ in range(WARMUP):  # compiles, then records and replays CUDA graphs
            step()
        c = count_ops(step)
        counts[name] = c.cuda_kernels if on_cuda else c.aten_ops
        kernels = f" {c.cuda_kernels:13.0f}" if on_cuda else ""
        print(f"{name:34s} {c.aten_ops:9.0f} {c.top_level_ops:10.0f}{kernels}")
    if on_cuda:
        print(f"\nGPU timeline with NVTX ranges per stage:\n{NSYS}")
    return counts


class _Labels:
    def __init__(self, d: dict):
        self.energy_per_atom, self.forces, self.stress, self.magmoms = (
            d["e"],
            d["f"],
            d["s"],
            d["m"],
        )


def reference_training_parts(lr: float = 3e-4) -> tuple[Any, Any, torch.optim.Optimizer]:
    """The reference package's training step parts, as its Trainer builds them: the CHGNet
    0.3.0 model, ``CombinedLoss`` (Huber, delta 0.1, prefactors e/f/s/m 2, 1.5, 0.1, 0.1) and
    Adam. Needs ``pip install chgnet``."""
    from chgnet.model import CHGNet
    from chgnet.trainer.trainer import CombinedLoss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    criterion = CombinedLoss(
        target_str="efsm",
        criterion="Huber",
        energy_loss_ratio=2,
        force_loss_ratio=1.5,
        stress_loss_ratio=0.1,
        mag_loss_ratio=0.1,
        delta=0.1,
    )
    return model, criterion, torch.optim.Adam(model.parameters(), lr=lr)


def _reference_step(structures: list, labels: list[dict], device: torch.device):
    model, criterion, optimizer = reference_training_parts()
    model.to(device)
    graphs = [model.graph_converter(s) for s in structures]
    if device.type != "cpu":  # as the reference's Trainer moves its graphs
        graphs = [g.to(str(device)) for g in graphs]
    f32 = torch.float32
    targets = {
        "e": torch.tensor([x["e"] for x in labels], dtype=f32, device=device),
        **{
            k: [torch.tensor(x[k], dtype=f32, device=device) for x in labels]
            for k in ("f", "s", "m")
        },
    }

    def step() -> None:
        optimizer.zero_grad()
        criterion(targets, model(graphs, task="efsm"))["loss"].backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    """``python -m fastchgnet.profiling.report [--batch-size 16] [--mode direct] ...``"""
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
