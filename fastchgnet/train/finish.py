"""The finish stage of a run: the test split, metrics.csv, plots, model.pt and summary.json."""

from __future__ import annotations

import torch

from fastchgnet.files import write_json_atomic
from fastchgnet.train.epoch import metric_row, run_eval
from fastchgnet.train.metrics import append_csv, format_table
from fastchgnet.train.plots import learning_curve_plot, parity_plot
from fastchgnet.train.progress import log
from fastchgnet.train.state import Run, RunSummary


def finish(run: Run, stopped: bool) -> RunSummary:
    """Test metrics, metrics.csv, plots, model.pt and summary.json (main rank)."""
    config, progress = run.config, run.progress
    test_results: dict[str, float] = {}
    if not stopped or progress.step_in_epoch == 0:  # not cut mid-epoch by run.max_steps
        if not run.val.results() and len(run.splits.val):  # resumed at the end: no val yet
            run.val = run_eval(run, "val")
        test = run_eval(run, "test")
        test_results = test.results()
        if run.rank == 0:
            val_results = run.val.results()
            log("\nfinal metrics\n" + format_table({"val": val_results, "test": test_results}))
            row = metric_row(progress.epoch, "test", progress, test_results)
            append_csv(run.out / "metrics.csv", row)
            if config.run.plots:
                for name, sums in (("val", run.val), ("test", test)):
                    path = parity_plot(sums, run.out / f"parity-{name}.png", f"{name} set")
                    if path is not None:
                        log(f"parity plot: {path}")
                path = learning_curve_plot(run.out, run.out / "learning-curve.png")
                if path is not None:
                    log(f"learning curve: {path}")
    seconds, structures = run.progress.train_seconds, run.progress.structures
    rate = structures / seconds if seconds > 0 else 0.0
    captured = run.step.captured
    summary = RunSummary(
        run.val.results(),
        test_results,
        progress.global_step,
        seconds,
        rate,
        run.out,
        structures=structures,
        graphs=captured.stats.graphs if captured is not None else 0,
        recompiles=captured.stats.recompiles if captured is not None else 0,
    )
    if run.rank == 0:
        run.options.save_final(run.model, run.out)  # the EMA weights, when on
        log(f"model written to {run.out / 'model.pt'}")
        write_summary(summary, run)
    run.scalars.close()
    return summary


def write_summary(summary: RunSummary, run: Run) -> None:
    """summary.json: throughput, capture counts and peak device memory, for scripts
    (bench/gpu_check.sh) that assert on a run."""
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    captured = run.step.captured
    compile_seconds = captured.stats.compile_seconds if captured is not None else 0.0
    stepping = summary.train_seconds - compile_seconds
    data = {
        "structures_per_second": summary.structures_per_second,
        # the same without the first call of each graph (tracing, compiling, CUDA-graph
        # recording): the steady state a longer run approaches
        "structures_per_second_after_compile": summary.structures / stepping
        if stepping > 0
        else 0.0,
        "train_seconds": summary.train_seconds,
        "compile_seconds": compile_seconds,
        "global_step": summary.global_step,
        "structures": summary.structures,
        "world_size": run.world_size,
        "compiled": run.compiled,
        "graphs": summary.graphs,
        "recompiles": summary.recompiles,
        "cudagraph_skips": _cudagraph_skips(),
        "host_syncs_checked": run.sync_check.checked > 0,
        "steps_checked_for_host_syncs": run.sync_check.checked,
        "peak_memory_bytes": peak,
        "val": summary.val,
        "test": summary.test,
        # whether early stopping ended the run (outputs.completed: a resume has nothing to do)
        "early_stopped": run.options.tracker.should_stop,
    }
    write_json_atomic(run.out / "summary.json", data)  # last: marks the run's end as done


def _cudagraph_skips() -> int:
    """Times inductor declined to record a CUDA graph in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])
