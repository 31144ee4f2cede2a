"""The TorchScript capture: the traced graph run by TorchScript equals eager, builds without
dynamo or inductor, and serves MD and relaxation through CompiledPotential (the decision that
weighs it against inductor: tests/compile/test_decide.py)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from fastchgnet.compile.capture import CapturedModel
from fastchgnet.compile.decide import capture_backends
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.programs import predict_program
from fastchgnet.compile.script import script_graph
from fastchgnet.compile.trace import batch_inputs, model_state, short_bonds_input, trace_program
from fastchgnet.data.batch import collate
from fastchgnet.data.graph import build_graph
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md.calculator import Calculator, as_atoms
from fastchgnet.md.relax import relax
from tests.compile.conftest import nvt_integrator, padded_batch, small_model

dynamics = importlib.import_module("fastchgnet.md.dynamics")
relax_module = importlib.import_module("fastchgnet.md.relax")  # the package exports relax()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("forces", ["conservative", "direct"])
def test_a_scripted_trace_gives_what_the_eager_model_gives(forces):
    model = small_model(forces, torch.float64).eval()
    batch, _ = padded_batch(torch.float64)
    traced = trace_program(model, predict_program(True, True), batch)
    scripted = script_graph(traced)
    assert isinstance(scripted, torch.jit.ScriptModule)
    outputs = scripted(*model_state(model)[1], *batch_inputs(batch))
    eager = model(batch, compute_forces=True, compute_stress=True)
    names = ("energy", "total_energy", "forces", "stress", "magmoms")
    for name, value in zip(names, outputs, strict=False):
        torch.testing.assert_close(value, getattr(eager, name), rtol=1e-10, atol=1e-10)


def test_a_scripted_trace_runs_each_repeated_computation_once():
    model = small_model("conservative", torch.float64).eval()
    batch, _ = padded_batch(torch.float64)
    traced = trace_program(model, predict_program(True, True), batch)

    def ops():  # script_graph changes the trace in place, then scripts what it holds
        return sum(node.op == "call_function" for node in traced.graph.nodes)

    traced_ops = ops()
    scripted = script_graph(traced)
    assert ops() < traced_ops, (ops(), traced_ops)
    outputs = scripted(*model_state(model)[1], *batch_inputs(batch))
    eager = model(batch, compute_forces=True, compute_stress=True)
    torch.testing.assert_close(outputs[2], eager.forces, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outputs[3], eager.stress, rtol=1e-10, atol=1e-10)


def _collated(structures, dtype=torch.float64):
    return collate([build_graph(s) for s in structures], dtype=dtype)


@pytest.mark.parametrize("threads", [1, 2])  # 2: the gathers' parallel form (layers.parallel_cpu)
def test_one_torchscript_graph_serves_batches_of_any_size_without_dynamo(threads):
    torch.set_num_threads(threads)  # the one_thread fixture restores the count
    model = small_model("conservative", torch.float64).eval()
    captured = CapturedModel(model, backend="torchscript")
    crystals = varied_structures(6, seed=5, max_atoms=8)
    batches = [crystals[:2], crystals[2:5], crystals[1:3], crystals[3:6]]
    with torch.no_grad():
        for structures in batches:  # other atoms, bonds, angles and short bonds each time
            batch = _collated(structures)
            got = captured.predict(batch)
            eager = model(batch, compute_forces=True, compute_stress=True)
            for name in ("energy", "forces", "stress", "magmoms"):
                torch.testing.assert_close(
                    getattr(got, name), getattr(eager, name), rtol=1e-10, atol=1e-10
                )
    assert captured.stats.graphs == 1  # one trace for all four
    assert captured.stats.dynamo_frames == 0  # no torch.compile anywhere
    assert captured.stats.compile_seconds > 0
    with pytest.raises(ValueError, match=r"torchscript.*any sizes"):
        CapturedModel(model, backend="torchscript", dynamic=True)


def test_graphs_run_without_torchscripts_optimisation_passes_and_the_setting_is_restored():
    """The passes cost a graph's first calls about 0.4 s and gain nothing on a traced aten
    graph (``ScriptedProgram.__call__``); the user's own setting is left as it was."""
    model = small_model("conservative", torch.float64).eval()
    captured = CapturedModel(model, backend="torchscript")
    batch = _collated(varied_structures(2, seed=5, max_atoms=8))
    with torch.no_grad():
        captured.predict(batch)  # builds the graph
        (program,) = captured._compiled.values()
        seen = []
        guard, graph = program.graphs[0]

        def recorded(*inputs):
            seen.append(torch._C._get_graph_executor_optimize())
            return graph(*inputs)

        program.graphs[0] = (guard, recorded)
        before = torch._C._get_graph_executor_optimize()
        got = captured.predict(batch)
    assert seen == [False]
    assert torch._C._get_graph_executor_optimize() == before
    eager = model(batch, compute_forces=True, compute_stress=True)
    torch.testing.assert_close(got.forces, eager.forces, rtol=1e-10, atol=1e-10)


def test_a_batch_outside_a_graphs_guards_gets_a_graph_of_its_own():
    """Sizes of 0 or 1 trace as constants, and free sizes are traced for 2 and more: a graph
    traced on one structure would give two structures wrong energies (its structure sum is
    fixed at one row), one traced on two would take one structure for two, and one traced
    with angles would take a crystal without any. The guards send each to a graph of its own,
    and batches like one already seen back to its graph."""
    model = small_model("conservative", torch.float64).eval()
    captured = CapturedModel(model, backend="torchscript", compute_stress=False)
    crystals = varied_structures(8, seed=102, max_atoms=8)  # 1, 5: no angles; 4, 6, 7: angles
    runs = [([6], 1), ([4, 7], 2), ([7], 2), ([4, 6, 7], 2), ([1], 3), ([5], 3)]
    inputs = {}
    with torch.no_grad():
        for picked, graphs in runs:
            batch = _collated([crystals[k] for k in picked])
            got = captured.predict(batch)
            eager = model(batch, compute_forces=True, compute_stress=False)
            torch.testing.assert_close(got.energy, eager.energy, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(got.forces, eager.forces, rtol=1e-10, atol=1e-10)
            assert captured.stats.graphs == graphs, picked
            state = model_state(model)[1]
            inputs[tuple(picked)] = [*state, *batch_inputs(batch), short_bonds_input(batch)]
    (program,) = captured._compiled.values()
    single, pair, bare = (guard for guard, _ in program.graphs)
    assert single(inputs[7,])
    assert not single(inputs[4, 7])
    assert pair(inputs[4, 6, 7])
    assert not pair(inputs[7,])  # one structure: below the range two were traced for
    assert not single(inputs[1,])  # no angles
    assert bare(inputs[5,])


def test_md_and_relaxation_through_a_torchscript_potential_follow_eager(monkeypatch):
    model = small_model("conservative", torch.float64).eval()
    potential = CompiledPotential(model, backend="torchscript", store=None)  # built here
    crystal = as_atoms(varied_structures(3, seed=11, max_atoms=8)[2])
    positions = []
    for calc in (Calculator(model), Calculator(potential)):
        md = nvt_integrator(crystal, calc)
        md.run(8)
        positions.append(md.atoms.positions.copy())
    np.testing.assert_allclose(positions[1], positions[0], atol=1e-9)
    assert potential.graphs_built == 1
    assert potential.padding.batches == 9
    assert potential.padding.padded == 0
    assert not potential.pads
    assert potential.padding_for([Calculator(model).graph(crystal)]) == 1
    structures = varied_structures(2, seed=2, max_atoms=4)
    eager = relax(structures, model, steps=4, compiled=False, progress=False)
    built = []

    def compiled_potential(model, **options):  # relax's own, recorded, no patience, built here
        fixed = {"patience": 0, "background": False, "store": None}
        built.append(CompiledPotential(model, **(options | fixed)))
        return built[-1]

    monkeypatch.setattr(relax_module, "compiled_potential", compiled_potential)
    scripted = relax(structures, model, steps=4, compiled="torchscript", progress=False)
    (relaxing,) = built
    assert relaxing.backend == "torchscript"
    assert relaxing.graphs_built >= 1
    assert relaxing.padding.batches >= 3  # the relaxation's calls ran through its graphs
    assert relaxing.eager_calls == 0
    assert relaxing.padding.padded == 0
    for a, b in zip(eager, scripted, strict=True):
        assert b.energy == pytest.approx(a.energy, abs=1e-9)
    with pytest.raises(ValueError, match="compiled='tvm'"):
        relax(structures, model, steps=1, compiled="tvm", progress=False)


def test_a_torch_without_torchscript_weighs_inductor_alone_and_says_so_when_asked(monkeypatch):
    monkeypatch.delattr(torch.jit, "script")
    assert capture_backends("cpu") == ("inductor",)
    model = small_model("conservative", torch.float64).eval()
    batch, _ = padded_batch(torch.float64)
    traced = trace_program(model, predict_program(True, False), batch)
    with pytest.raises(RuntimeError, match=r"TorchScript is not available.*use the inductor"):
        script_graph(traced)


def test_the_calculator_keeps_its_neighbour_rule_beside_its_capture():
    model = small_model("conservative", torch.float64)
    for compiled in (False, "torchscript"):
        calc = Calculator(model, compiled=compiled)
        assert calc.neighbours.backend == "pymatgen"
        assert Calculator(model, compiled=compiled, backend="vesin").neighbours.backend == "vesin"
    assert Calculator(model, compiled="torchscript").potential.backend == "torchscript"


def test_written_md_frames_take_their_stress_from_a_torchscript_graph_once_forces_have_one():
    """A written MD step (``stress_next``) ran the eager model for its stress under every
    capture; a TorchScript capture now builds a stress graph once its force graph is there
    (before that, and always with inductor, the eager model answers)."""
    model = small_model("conservative", torch.float64).eval()
    potential = CompiledPotential(model, backend="torchscript", store=None)  # built here
    md = nvt_integrator(as_atoms(varied_structures(3, seed=11, max_atoms=8)[2]), Calculator(model))
    atoms, calc = md.atoms, Calculator(potential)
    atoms.calc = calc
    calc.stress_next = True
    atoms.get_forces()  # no graph yet: the eager model
    stresses = [(atoms.positions.copy(), calc.results["stress"].copy())]
    assert potential.graphs_built == 0
    md.run(1)  # a force call without stress: builds the force graph
    assert potential.graphs_built == 1
    for _ in range(2):
        calc.stress_next = True
        md.run(1)  # the stress graph: built at the first, run at the second
        stresses.append((atoms.positions.copy(), calc.results["stress"].copy()))
    assert potential.graphs_built == 2
    assert potential.captured[True, False].stats.graphs == 1
    assert potential.padding.batches == 3  # every call after the first ran a graph
    for positions, stress in stresses:
        again = atoms.copy()
        again.positions = positions
        again.calc = Calculator(model)
        np.testing.assert_allclose(stress, again.get_stress(), atol=1e-10)


def test_a_background_build_waits_while_another_program_builds(monkeypatch):
    """Two children building at once would share the core a child takes from the run; a
    program whose graph is missing answers eagerly until no child builds, then starts."""
    import fastchgnet.compile.script as script

    model = small_model("conservative", torch.float64).eval()
    batch = _collated(varied_structures(2, seed=5, max_atoms=8))
    started = []
    monkeypatch.setattr(script.ScriptedProgram, "_start", lambda self, inputs: started.append(1))
    monkeypatch.setattr(script, "available_in_background", lambda: True)
    monkeypatch.setattr(script, "busy", lambda: True)  # another program's child builds
    captured = CapturedModel(model, backend="torchscript", background=True)
    with torch.no_grad():
        got = captured.predict(batch)
        captured.predict(batch)
        assert started == []
        monkeypatch.setattr(script, "busy", lambda: False)
        captured.predict(batch)
    assert started == [1]
    eager = model(batch, compute_forces=True, compute_stress=True)
    torch.testing.assert_close(got.forces, eager.forces, rtol=1e-10, atol=1e-10)
