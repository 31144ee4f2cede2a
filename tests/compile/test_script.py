"""The TorchScript capture: the traced graph run by TorchScript equals eager, builds without
dynamo or inductor, serves MD and relaxation through CompiledPotential; and the compile
decision weighs it against inductor."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from fastchgnet.compile.capture import CapturedModel
from fastchgnet.compile.decide import (
    SCRIPT_BUILD_SECONDS,
    capture_backends,
    choose_capture,
    compiled_call_model,
    script_fraction,
)
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.programs import predict_program
from fastchgnet.compile.script import script_graph
from fastchgnet.compile.trace import batch_inputs, model_state, trace_program
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md.calculator import Calculator, as_atoms
from fastchgnet.md.relax import relax
from tests.compile.conftest import padded_batch, small_model

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


def test_the_torchscript_capture_builds_once_per_shape_without_dynamo():
    model = small_model("conservative", torch.float64).eval()
    captured = CapturedModel(model, backend="torchscript")
    batch, _ = padded_batch(torch.float64)
    with torch.no_grad():
        first = captured.predict(batch)
        again = captured.predict(batch)
    assert captured.stats.graphs == 1
    assert captured.stats.dynamo_frames == 0  # no torch.compile anywhere
    assert captured.stats.compile_seconds > 0
    torch.testing.assert_close(again.forces, first.forces, rtol=1e-12, atol=1e-12)
    eager = model(batch, compute_forces=True, compute_stress=True)
    torch.testing.assert_close(first.forces, eager.forces, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"torchscript.*fixed shapes"):
        CapturedModel(model, backend="torchscript", dynamic=True)


def test_md_and_relaxation_through_a_torchscript_potential_follow_eager(monkeypatch):
    model = small_model("conservative", torch.float64).eval()
    potential = CompiledPotential(model, backend="torchscript")
    assert potential.store is None  # nothing on disk: the build takes seconds
    crystal = as_atoms(varied_structures(3, seed=11, max_atoms=8)[2])
    positions = []
    for calc in (Calculator(model), Calculator(potential)):
        atoms = crystal.copy()
        atoms.set_momenta(np.random.default_rng(0).normal(scale=0.3, size=(len(atoms), 3)))
        atoms.calc = calc
        dynamics.make_integrator(atoms, "nvt", "berendsen", temperature=300, timestep=2.0).run(8)
        positions.append(atoms.positions.copy())
    np.testing.assert_allclose(positions[1], positions[0], atol=1e-9)
    assert potential.graphs_built == 1
    structures = varied_structures(2, seed=2, max_atoms=4)
    eager = relax(structures, model, steps=4, compiled=False, progress=False)
    built = []

    def compiled_potential(model, **options):  # relax's own, recorded, with no patience
        built.append(CompiledPotential(model, **(options | {"patience": 0})))
        return built[-1]

    monkeypatch.setattr(relax_module, "compiled_potential", compiled_potential)
    scripted = relax(structures, model, steps=4, compiled="torchscript", progress=False)
    (relaxing,) = built
    assert relaxing.backend == "torchscript"
    assert relaxing.graphs_built >= 1
    assert relaxing.padding.batches >= 3  # the relaxation's calls ran through its graphs
    for a, b in zip(eager, scripted, strict=True):
        assert b.energy == pytest.approx(a.energy, abs=1e-9)
    with pytest.raises(ValueError, match="compiled='tvm'"):
        relax(structures, model, steps=1, compiled="tvm", progress=False)


def test_a_script_call_saves_the_per_op_overhead_and_pays_for_its_padding():
    # stop 44, LiMnO2 MD (AVX-512, 2 threads): eager calls ~9.9 ms, TorchScript steps ~2 ms
    # shorter in a shape of 1.15 padded entries per real one
    assert script_fraction(0.0099, 1.15) == pytest.approx(0.8, abs=0.03)
    assert script_fraction(0.05, 1.1) == 1.0  # 64 atoms: the padding takes more than it saves
    assert script_fraction(0.0, 1.0) == 1.0
    assert compiled_call_model("cpu", 0.0099, 1.15, None, "torchscript") == (
        script_fraction(0.0099, 1.15),
        SCRIPT_BUILD_SECONDS,
    )
    assert capture_backends("cpu") == ("inductor", "torchscript")
    assert capture_backends("cuda") == ("inductor",)


def prices(inductor: tuple[float, float], script: tuple[float, float]):
    return {"inductor": inductor, "torchscript": script}.__getitem__


def test_the_capture_that_saves_most_net_of_its_build_is_chosen():
    # 8-atom MD over 2000 steps: inductor's 25 s build does not pay, TorchScript's 2 s does
    small = choose_capture(1950, 0.0099, "cpu", prices((0.6, 25.0), (0.8, 2.0)), what="MD")
    assert small.compile
    assert small.backend == "torchscript"
    assert small.reason.startswith("compile on for this MD with torchscript: compiling costs ~2")
    # 64 atoms: TorchScript gains nothing, inductor pays
    large = choose_capture(1950, 0.05, "cpu", prices((0.6, 25.0), (1.0, 2.0)))
    assert large.compile
    assert large.backend == "inductor"
    assert large.net_seconds == pytest.approx(1950 * 0.05 * 0.4 - 25.0)
    assert large.reason.endswith("[torchscript: ~2 s build, ~0 s saved]")  # the other's price
    # a few calls: neither pays, and the reason names the cheaper loss
    short = choose_capture(3, 0.0099, "cpu", prices((0.6, 25.0), (0.8, 2.0)), what="3-step MD")
    assert not short.compile
    assert short.reason.startswith("compile off for this 3-step MD with torchscript")
    # on a GPU only inductor is priced
    asked = []
    gpu = choose_capture(5000, 0.02, "cuda", lambda b: asked.append(b) or (0.3, 45.0))
    assert asked == ["inductor"]
    assert gpu.compile


@pytest.fixture
def md_potentials(monkeypatch):
    """run_md's compiled potentials as asked, but inductor's swapped for aot_eager (no C++)."""
    built: list[CompiledPotential] = []

    def compiled_potential(model, backend="inductor", **options):
        backend = "torchscript" if backend == "torchscript" else "aot_eager"
        built.append(CompiledPotential(model, backend=backend, store=None, **options))
        return built[-1]

    monkeypatch.setattr(dynamics, "compiled_potential", compiled_potential)
    return built


def test_a_short_md_run_of_a_small_cell_runs_torchscript_by_default(
    md_potentials, monkeypatch, capsys
):
    # eager calls of 12 ms where inductor's build would cost 35 s: only TorchScript pays
    seconds = iter([0.012, 0.001])
    monkeypatch.setattr(dynamics, "call_seconds", lambda atoms, repeats=5: next(seconds))
    monkeypatch.setattr(dynamics, "MD_COMPILE", dynamics.MD_COMPILE | {"patience": 2})
    monkeypatch.setattr("fastchgnet.compile.decide.SCRIPT_BUILD_SECONDS", 0.1)
    monkeypatch.setattr(CompiledPotential, "padding_for", lambda self, graphs: 1.1)
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    model = small_model("conservative", torch.float64)
    run = {"steps": 400, "seed": 4, "progress": True}
    atoms = dynamics.run_md(structure, model, **run)
    assert "compile on for this 400-step MD with torchscript" in capsys.readouterr().err
    inductor, script = md_potentials
    assert atoms.calc.model is script
    assert script.backend == "torchscript"
    assert (inductor.graphs_built, script.graphs_built) == (0, 1)
    eager = dynamics.run_md(structure, model, compiled=False, **run)
    np.testing.assert_allclose(atoms.positions, eager.positions, atol=1e-8)


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
    assert Calculator(model, compiled="torchscript").model.backend == "torchscript"
