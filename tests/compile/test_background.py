"""Builds in a forked child (compile.background): results and failures come back, calls made
meanwhile run eagerly on a spared core, and a TorchScript potential switches to its graph
once the child is done, equal to eager throughout."""

from __future__ import annotations

import importlib
import logging
import os
import time

import numpy as np
import pytest
import torch

from fastchgnet.compile import background
from fastchgnet.compile.background import BackgroundBuild, BackgroundBuildError, spare_core
from fastchgnet.compile.decide import SCRIPT_BUILD_SECONDS, build_cost
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.script import ScriptedProgram
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md.calculator import Calculator, as_atoms
from fastchgnet.model.potential import EagerPotential
from tests.compile.conftest import nvt_integrator, small_model

dynamics = importlib.import_module("fastchgnet.md.dynamics")
needs_fork = pytest.mark.skipif(
    not background.available_in_background(), reason="builds in place here"
)


@needs_fork
def test_a_background_build_sends_its_result_or_its_error_back():
    assert BackgroundBuild(lambda: {"graph": b"\x00" * 300_000}, 1).wait() == {
        "graph": b"\x00" * 300_000  # more than a pipe holds: read while the child writes
    }
    slow = BackgroundBuild(lambda: time.sleep(0.5) or 7, 1)
    assert slow.poll() is None  # still running
    assert slow.wait() == 7
    assert slow.poll() == 7
    assert slow.seconds >= 0.5
    with pytest.raises(BackgroundBuildError, match="ZeroDivisionError: division by zero"):
        BackgroundBuild(lambda: 1 / 0, 1).wait()
    with pytest.raises(BackgroundBuildError, match="ended without a result"):
        BackgroundBuild(lambda: os._exit(3), 1).wait()  # died before it could answer
    assert BackgroundBuild(torch.get_num_threads, 3).wait() == 3  # the caller's count


@needs_fork
def test_a_finished_child_stops_counting_as_busy_before_its_owner_asks():
    """A written frame's stress program asks for its child's graph once in many MD steps: its
    finished child stayed counted (``busy``), blocked on a full pipe, and every force call
    meanwhile ran on a thread fewer. ``busy`` now reads unfinished builds on itself."""
    build = BackgroundBuild(lambda: b"\x00" * 300_000, 1)  # more than a pipe holds
    deadline = time.monotonic() + 60
    while background.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not background.busy()
    assert build.done
    assert build.poll() == b"\x00" * 300_000  # kept for its owner
    failed = BackgroundBuild(lambda: 1 / 0, 1)
    while background.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not background.busy()
    with pytest.raises(BackgroundBuildError, match="ZeroDivisionError"):
        failed.poll()


@needs_fork
def test_a_cancelled_build_leaves_no_process_behind():
    build = BackgroundBuild(lambda: time.sleep(60), 1)
    pid = build._pid
    assert background.busy()
    build.cancel()
    assert not background.busy()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_spare_core_takes_a_thread_only_where_the_cores_are_short(monkeypatch):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
        with spare_core():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        with spare_core():
            assert torch.get_num_threads() == 2
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        assert not background.available_in_background()  # the child would only take turns
    finally:
        torch.set_num_threads(threads)


def test_a_background_build_is_priced_at_the_calls_it_leaves_eager(monkeypatch):
    monkeypatch.setattr(background, "available_in_background", lambda: True)
    assert build_cost(SCRIPT_BUILD_SECONDS, 0.7, background=False) == SCRIPT_BUILD_SECONDS
    cost = build_cost(SCRIPT_BUILD_SECONDS, 0.7, background=True)
    assert cost == pytest.approx(SCRIPT_BUILD_SECONDS * (1 - 0.7 / 1.25))
    monkeypatch.setattr(background, "available_in_background", lambda: False)
    assert build_cost(SCRIPT_BUILD_SECONDS, 0.7, background=True) == SCRIPT_BUILD_SECONDS


def scripted(potential: CompiledPotential) -> ScriptedProgram:
    """The potential's one ScriptedProgram (energy and forces)."""
    (program,) = potential.captured[False, False]._compiled.values()
    return program


@needs_fork
def test_a_torchscript_potential_answers_eagerly_until_its_child_has_built_the_graph():
    threads = torch.get_num_threads()
    model = small_model("conservative", torch.float64).eval()
    potential = CompiledPotential(model, backend="torchscript", background=True, store=None)
    graphs = [Calculator(model).graph(as_atoms(s)) for s in varied_structures(2, seed=3)]
    eager = EagerPotential(model).predict_graphs(graphs, stress=False)
    first = potential.predict_graphs(graphs, stress=False)
    assert potential.graphs_built == 0
    assert not potential.has_graphs
    assert scripted(potential).pending is not None
    scripted(potential).wait()
    assert potential.graphs_built == 1
    assert potential.has_graphs
    assert potential.background_seconds > 0
    assert potential.compile_seconds == 0
    assert torch.get_num_threads() == threads  # given back after the eager call
    second = potential.predict_graphs(graphs, stress=False)
    for name in ("energy", "forces", "magmoms"):
        expected = getattr(eager, name).detach()
        np.testing.assert_allclose(getattr(first, name), expected, atol=1e-12)
        np.testing.assert_allclose(getattr(second, name), expected, atol=1e-9)


@needs_fork
def test_a_failed_background_build_is_reported_and_built_in_place(monkeypatch, caplog):
    def broken(self, inputs):
        time.sleep(0.5)  # still running when the first call looks
        raise RuntimeError("no room on the device")

    monkeypatch.setattr(ScriptedProgram, "_built", broken)  # the child inherits it
    model = small_model("conservative", torch.float64).eval()
    potential = CompiledPotential(model, backend="torchscript", background=True, store=None)
    graphs = [Calculator(model).graph(as_atoms(varied_structures(1, seed=3)[0]))]
    potential.predict_graphs(graphs, stress=False)
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        scripted(potential).wait()
    assert "background TorchScript build failed (RuntimeError: no room on the device)" in (
        caplog.text
    )
    assert potential.graphs_built == 0
    potential.predict_graphs(graphs, stress=False)  # built here, as without a child
    assert potential.graphs_built == 1
    assert potential.compile_seconds > 0


@needs_fork
def test_md_with_a_background_build_follows_eager_and_switches_to_the_graph(monkeypatch):
    model = small_model("conservative", torch.float64).eval()
    options = dynamics.md_compile_options(40) | {"backend": "torchscript", "store": None}
    assert options["background"]  # run_md's captures build in the background
    potential = CompiledPotential(model, **options)
    crystal = as_atoms(varied_structures(3, seed=11, max_atoms=8)[2])
    positions = []
    for calc in (Calculator(model), Calculator(potential)):
        md = nvt_integrator(crystal, calc)
        md.run(3)
        if calc.potential is potential:
            scripted(potential).wait()  # the rest of the run goes through the graph
        md.run(5)
        positions.append(md.atoms.positions.copy())
    np.testing.assert_allclose(positions[1], positions[0], atol=1e-9)
    assert potential.graphs_built == 1
    assert potential.padding.batches == 9


@needs_fork
def test_a_background_graph_is_traced_for_the_callers_threads_and_a_run_leaves_no_child(
    monkeypatch,
):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the model picks its scatter form by the thread count
        model = small_model("conservative", torch.float64).eval()
        graphs = [Calculator(model).graph(as_atoms(varied_structures(1, seed=3)[0]))]
        kinds = []
        for in_background in (False, True):
            potential = CompiledPotential(
                model, backend="torchscript", background=in_background, store=None
            )
            potential.predict_graphs(graphs, stress=False)
            if in_background:
                scripted(potential).wait()
            ((_, graph),) = scripted(potential).graphs
            kinds.append(sorted(node.kind() for node in graph.graph.nodes()))
        assert kinds[0] == kinds[1]
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("FASTCHGNET_COMPILE_STORE", "0")  # a kept graph would start no child
    options = {"steps": 3, "seed": 4, "progress": False, "compiled": "torchscript"}
    dynamics.run_md(varied_structures(1, seed=2, max_atoms=4)[0], model, **options)
    assert not background.busy()  # the run ended before its graph: the build was stopped
