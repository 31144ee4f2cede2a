"""The training step's matrix products on this CPU: torch's own (MKL, what both our model and
the reference run) against oneDNN, at the step's own shapes and layouts.

On an AMD EPYC with AVX-512 (stops 51-53) our ratios to the reference fell below the Xeon's
(direct compiled 8.0-8.2x against 10.3-10.7x). A profile of the direct compiled step at batch
16 put 53 % of its time in ``aten::mm`` and ``aten::addmm``. torch's CPU wheel runs them with
MKL, and this bench asks how much a different GEMM library would give there.

It records every ``aten.mm`` and ``aten.addmm`` of one eager training step (conservative and
direct, ``train.step.standalone_step``, bench_train_step.py's batches), with shapes and strides.
Then it times each distinct product three ways, on inputs of the same shape and layout:
- MKL, as the step ran it;
- oneDNN (``torch.ops.mkldnn._linear_pointwise``) with its primitive cached. Any copy it needs
  is on its clock: oneDNN falls back to a reference kernel, 100x slower, for a weight with
  padded rows.
- oneDNN's first call of that shape, which creates and JIT-compiles the primitive.

Products are grouped by layout:
- "NN": a contiguous left factor, the forward and input-gradient products;
- "TN": a transposed left factor, the weight gradients, whose sum runs over all atoms, bonds
  or angles.

Per group it prints milliseconds per step and the ratio, and then the share of the step a
perfect switch could save.

    python bench/bench_gemm.py [--threads 2] [--batch-size 16] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import median_time


def record_gemms(step) -> Counter:
    """Each (op, bias dims, (shape, stride) of both factors) of the matrix products one call of
    ``step`` dispatches, counted (torch.profiler's recorded shapes and strides: it sees
    inductor's ``extern_kernels.mm(..., out=)`` calls as well as eager ones)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    seen: Counter = Counter()
    for event in prof.events():
        if event.name not in ("aten::mm", "aten::addmm"):
            continue
        shapes, strides = event.structured_input_shapes, event.structured_input_strides
        first = 0 if event.name == "aten::mm" else 1
        bias = () if first == 0 else (len(shapes[0]),)
        factors = tuple((tuple(shapes[k]), tuple(strides[k])) for k in (first, first + 1))
        seen[(event.name[6:], bias, *factors)] += 1
    return seen


def strided(shape: tuple, stride: tuple) -> torch.Tensor:
    """A random float32 tensor of ``shape`` with ``stride`` (its storage just large enough)."""
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    return torch.randn(size).as_strided(shape, stride)


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it or its transpose is contiguous (layouts oneDNN runs fast), else a copy."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def products(key: tuple) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """(MKL, oneDNN): one recorded product as torch ran it and as oneDNN runs it, on random
    factors of the recorded shapes and strides (the same factors for both)."""
    _, bias_dims, (a_shape, a_stride), (b_shape, b_stride) = key
    a, b = strided(a_shape, a_stride), strided(b_shape, b_stride)
    bias = torch.randn(b_shape[1] if bias_dims == (1,) else (a_shape[0], b_shape[1]))
    linear = torch.ops.mkldnn._linear_pointwise
    if not bias_dims:
        return (lambda: torch.mm(a, b)), lambda: linear(
            dense(a), dense(b.t()), None, "none", [], ""
        )
    if bias_dims == (1,):  # oneDNN adds a row bias itself
        return (lambda: torch.addmm(bias, a, b)), lambda: linear(
            dense(a), dense(b.t()), bias, "none", [], ""
        )
    return (
        lambda: torch.addmm(bias, a, b)
    ), lambda: linear(dense(a), dense(b.t()), None, "none", [], "") + bias


def time_gemm(key: tuple, repeats: int) -> tuple[float, float, float]:
    """(MKL, oneDNN cached, oneDNN first call) seconds of one recorded product."""
    mkl, onednn = products(key)
    mkl_seconds = median_time(mkl, repeats, warmup=2)
    start = time.perf_counter()
    onednn()  # creates and JIT-compiles the primitive for this shape
    first = time.perf_counter() - start
    return mkl_seconds, median_time(onednn, repeats, warmup=2), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["conservative", "direct"])
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="the compiled steps' products too (a padded packed batch, as CPU training "
        "captures it; each graph compiles first, about a minute)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench_train_step import padded_batches, random_labels

    from fastchgnet import FastCHGNet
    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.random_crystals import varied_structures
    from fastchgnet.numerics import flush_denormals
    from fastchgnet.train.loading import collate_items
    from fastchgnet.train.step import dynamic_sizes, standalone_step

    structures = varied_structures(240, seed=7, max_atoms=108)
    labels = random_labels(structures, seed=1)
    graphs = [build_graph(s) for s in structures]
    order = np.random.default_rng(0).permutation(len(structures))
    # the first of the batches bench_train_step.py --packed --batches 12 times: eager takes it
    # as it is, compiled padded as CPU training pads it
    chunks, _, padded = padded_batches(
        graphs, labels, order, args.batch_size, 12, True, dynamic_sizes("cpu")
    )
    chosen = chunks[0]
    batches = {False: collate_items([(graphs[i], labels[i]) for i in chosen])}
    if args.compiled:
        batches[True] = padded[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; the first packed batch "
        f"of bench_train_step.py --packed at batch size {args.batch_size}: {len(chosen)} "
        f"crystals, {sum(len(structures[i]) for i in chosen)} atoms; milliseconds per step"
    )
    header = "{:22s} {:>5s} {:>6s} {:>8s} {:>10s} {:>7s} {:>13s} {:>7s}"
    print(header.format("step", "group", "calls", "MKL ms", "oneDNN ms", "ratio", "1st calls ms",
                        "saves"))  # fmt: skip
    for mode in args.modes:
        for compiled in sorted(batches):
            torch.manual_seed(0)
            if mode == "conservative":
                model = FastCHGNet.from_reference("0.3.0")
            else:
                model = FastCHGNet(forces="direct", coupled_updates=False)
            step = standalone_step(model.train(), compiled=compiled)
            batch = batches[compiled]
            name = f"{mode} {'compiled' if compiled else 'eager'}"
            with flush_denormals():
                step(*batch)  # a compiled step builds its graph here
                step_seconds = median_time(lambda s=step, b=batch: s(*b), 5, warmup=1)
                seen = record_gemms(lambda s=step, b=batch: s(*b))
            report(name, seen, step_seconds, args.repeats)


def report(name: str, seen: Counter, step_seconds: float, repeats: int) -> None:
    """Times every recorded product (``time_gemm``) and prints the groups' rows and the
    bound on the step: oneDNN for each product where it was faster, primitives cached."""
    header = "{:22s} {:>5s} {:>6s} {:>8s} {:>10s} {:>7s} {:>13s} {:>7s}"
    groups: dict[str, list[float]] = {}
    best = 0.0
    for key, calls in seen.items():
        a_shape, a_stride = key[2]
        layout = "NN" if a_stride == (a_shape[1], 1) else "TN"
        mkl, cached, first = time_gemm(key, repeats)
        best += calls * max(mkl - cached, 0.0)
        total = groups.setdefault(layout, [0, 0.0, 0.0, 0.0])
        for index, value in enumerate((calls, calls * mkl, calls * cached, first)):
            total[index] += value
    for layout, (calls, mkl, cached, first) in sorted(groups.items()):
        print(header.format(name, layout, str(calls), f"{mkl * 1e3:.1f}", f"{cached * 1e3:.1f}",
                            f"{mkl / cached:.2f}x", f"{first * 1e3:.1f}",
                            f"{(mkl - cached) / step_seconds:.1%}"))  # fmt: skip
    gemm = sum(g[1] for g in groups.values())
    print(
        f"{name}: step {step_seconds * 1e3:.1f} ms, its products (MKL) {gemm * 1e3:.1f} ms "
        f"({gemm / step_seconds:.0%}); oneDNN for each product where faster, primitives "
        f"cached: the step {step_seconds / (step_seconds - best):.2f}x faster at best"
    )


if __name__ == "__main__":
    main()
