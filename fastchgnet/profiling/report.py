"""``fastchgnet profile``: aten operators (and CUDA kernels) per training step, side by side.

Runs one batch of varied crystals through a training step (forward e/f/s/m, Huber loss,
backward, Adam) of the reference chgnet package, our eager model and our compiled model, and
prints the counts per step. For a GPU timeline use Nsight Systems (see ``NSYS``).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import numpy as np
import torch

NSYS = (
    "nsys profile --trace=cuda,nvtx,osrt --sample=none -o fastchgnet_step "
    "python bench/bench_train_step.py --batch-sizes 16 --batches 2 --repeats 2\n"
    "nsys stats --report nvtx_sum,cuda_gpu_kern_sum fastchgnet_step.nsys-rep"
)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the profile command (added to ``parser`` when given)."""
    parser = parser or argparse.ArgumentParser(prog="fastchgnet profile", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-atoms", type=int, default=108)
    parser.add_argument("--mode", choices=["conservative", "direct"], default="conservative")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled model")
    parser.add_argument("--no-reference", action="store_true", help="skip the chgnet package")
    return parser


def run(args: argparse.Namespace) -> dict[str, float]:
    """Print and return aten ops per training step for each implementation."""
    from fastchgnet import FastCHGNet
    from fastchgnet.compile import CapturedModel
    from fastchgnet.compile.step import TrainStep, make_adam
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.padding import collate_padded, tight_capacity
    from fastchgnet.data.synthetic import varied_structures
    from fastchgnet.profiling.counters import count_ops

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
        steps["reference chgnet"] = _reference_step(structures, labels)
    graphs = [build_graph(s) for s in structures]
    capacity = tight_capacity([graphs])
    ours = [_Labels(x) for x in labels]
    batch, label_batch = collate_padded(graphs, capacity, ours)
    if args.mode == "conservative":
        model = FastCHGNet.from_reference("0.3.0")
    else:
        model = FastCHGNet(forces="direct", coupled_updates=False)
    for kind in ["eager"] + ([] if args.no_compile else ["compiled"]):
        step = TrainStep(CapturedModel(model, eager=kind == "eager"), make_adam(model.parameters()))
        steps[f"fastchgnet {args.mode} {kind}"] = lambda s=step: s(batch, label_batch)
    counts = {}
    print(
        f"training step, batch of {args.batch_size} varied crystals "
        f"({sum(len(s) for s in structures)} atoms)"
    )
    print(f"{'':34s} {'aten ops':>9s} {'top-level':>10s} {'CUDA kernels':>13s}")
    for name, step in steps.items():
        step()  # warm-up (compiles)
        c = count_ops(step)
        counts[name] = c.aten_ops
        print(f"{name:34s} {c.aten_ops:9.0f} {c.top_level_ops:10.0f} {c.cuda_kernels:13.0f}")
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


def _reference_step(structures: list, labels: list[dict]):
    model, criterion, optimizer = reference_training_parts()
    graphs = [model.graph_converter(s) for s in structures]
    f32 = torch.float32
    targets = {
        "e": torch.tensor([x["e"] for x in labels], dtype=f32),
        **{k: [torch.tensor(x[k], dtype=f32) for x in labels] for k in ("f", "s", "m")},
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
