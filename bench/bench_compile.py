"""Compile time, cold and warm, each in a new process: the numbers a user waits for.

Programs: an MD / inference graph (LiMnO2, 8 atoms, energy and forces; ``CompiledPotential``
as ``Calculator(compiled=True)`` and ``run_md`` use it) and the conservative training step at
batch 16 (``train.step.standalone_step``, the step ``launcher/train.py`` runs, captured), both
at the reference architecture (CHGNet 0.3.0 weights when chgnet is installed, else the same
architecture with random weights).

Each program runs in three new processes: ``cold`` with empty caches (our store, inductor's
cache and its precompiled headers, all in a fresh temporary folder), then ``warm`` twice with
the caches the cold one left. Each prints the seconds of its first call (trace, compile or load,
and the call itself) and of the whole process, and its graphs: predict's ``built`` (traced and
compiled in the process) and ``loaded`` (ready-made from our store), apart; the training step's
``traced`` (traced in every process; warm, inductor's cache supplies the compiled code).
Targets (issue #15): cold at most 30 s (inference) and 90 s (training), warm at most 10 s.

    python bench/bench_compile.py [--programs predict train] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from help_text import first_sentence

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"
#: the graph counts a worker reports (module docstring)
GRAPH_COUNTS = ("built", "loaded", "traced")
TARGETS = {"predict": (30.0, 10.0), "train": (90.0, 10.0)}


def reference_model():
    """CHGNet 0.3.0 in our model, or the same architecture with random weights."""
    from fastchgnet import FastCHGNet

    try:
        return FastCHGNet.from_reference("0.3.0")
    except ImportError:
        return FastCHGNet()


def worker(program: str) -> dict[str, float]:
    """Run ``program``'s first compiled call in this process; its timings."""
    import torch

    from fastchgnet.data.graph import build_graph
    from fastchgnet.data.random_crystals import varied_structures

    model = reference_model()
    start = time.perf_counter()
    if program == "predict":
        from pymatgen.core import Structure

        from fastchgnet.compile.potential import CompiledPotential

        cif = REFERENCE / "mp-18767-LiMnO2.cif"
        structure = (
            Structure.from_file(cif)
            if cif.is_file()
            else next(s for s in varied_structures(50, seed=0) if len(s) == 8)
        )
        potential = CompiledPotential(model)
        potential.predict_graphs([build_graph(structure)], stress=False)
        first = time.perf_counter() - start
        stats = {"loaded": potential.graphs_loaded, "built": potential.graphs_built}
    else:
        from bench_train_step import random_labels

        from fastchgnet.data.capacity import tight_capacity
        from fastchgnet.train.loading import PaddedCollate
        from fastchgnet.train.step import dynamic_sizes, standalone_step

        structures = varied_structures(16, seed=7, max_atoms=64)
        graphs = [build_graph(s) for s in structures]
        collate = PaddedCollate(tight_capacity([graphs]), fit=dynamic_sizes("cpu"))
        batch, labels = collate(list(zip(graphs, random_labels(structures, seed=1), strict=True)))
        model.train()
        step = standalone_step(model, compiled=True)
        step(batch, labels)
        first = time.perf_counter() - start
        stats = {"traced": step.captured.stats.graphs}
    return {"first_call_s": first, "threads": torch.get_num_threads(), **stats}


def run(program: str, caches: Path, threads: int) -> dict[str, float]:
    """``program`` in a new process with its caches under ``caches``; its timings."""
    tmp = caches / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        FASTCHGNET_CACHE_DIR=str(caches),
        TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
        # inductor keeps its precompiled C++ headers in tempfile.gettempdir(), not in its
        # cache dir: a fresh TMPDIR makes "cold" cold for them too (they cost ~6 s)
        TMPDIR=str(tmp),
        OMP_NUM_THREADS=str(threads),
        PYTHONWARNINGS="ignore",
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--worker", program],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{program} worker failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "process_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=first_sentence(__doc__))
    parser.add_argument("--programs", nargs="+", default=["predict", "train"])
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of each process")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    print(f"{args.threads} thread(s); each line is a new process; machine load may inflate times")
    print(f"{'program':8s} {'start':6s} {'first call s':>13s} {'process s':>10s} {'target s':>9s}")
    for program in args.programs:
        with tempfile.TemporaryDirectory(prefix="fastchgnet-compile-") as folder:
            for k, start in enumerate(("cold", "warm", "warm")):
                result = run(program, Path(folder), args.threads)
                target = TARGETS[program][0 if k == 0 else 1]
                verdict = "ok" if result["first_call_s"] <= target else "OVER"
                print(
                    f"{program:8s} {start:6s} {result['first_call_s']:13.1f} "
                    f"{result['process_s']:10.1f} {target:9.0f} {verdict}  "
                    + ", ".join(f"{k} {result[k]}" for k in GRAPH_COUNTS if k in result)
                )


if __name__ == "__main__":
    main()
