"""Compile or not: the decision weighs the compile against what it saves, inductor against
TorchScript on a CPU, and run_md acts on it."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from fastchgnet.compile import decide as decide_module
from fastchgnet.compile.decide import (
    COLD_GPU_PREDICT_SECONDS,
    COLD_PREDICT_SCALE,
    COLD_PREDICT_SECONDS,
    GPU_COMPILED_FRACTION,
    SCRIPT_BUILD_SECONDS,
    capture_backends,
    choose_capture,
    cold_estimate,
    compiled_call_model,
    compiled_fraction,
    decide,
    for_cpu,
    script_fraction,
)
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.store import CompiledStore
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.model.potential import graphs_for

from .conftest import small_model

dynamics = importlib.import_module("fastchgnet.md.dynamics")
relax_module = importlib.import_module("fastchgnet.md.relax")  # the package exports relax()


def test_compile_pays_only_when_the_saving_exceeds_the_cost() -> None:
    long_run = decide(5000, 0.036, 60.0, fraction=0.5, what="5000-step MD")
    assert long_run.compile
    assert long_run.saved_seconds == pytest.approx(90.0)
    assert long_run.reason.startswith("compile on for this 5000-step MD")
    assert "build ~60.0 s, saves ~90.0 s over 5000 calls" in long_run.reason
    short_run = decide(2000, 0.036, 60.0, fraction=0.5)
    assert not short_run.compile
    assert "compile off" in short_run.reason
    assert "build ~60.0 s, saves ~36.0 s over 2000 calls" in short_run.reason
    # costs and savings that round to the same whole second still read apart (was "~2 s, < ~2 s")
    close = decide(100, 0.046, 1.6, fraction=0.5)
    assert "build ~1.6 s, saves ~2.3 s over 100 calls" in close.reason
    warm = decide(500, 0.036, 1.0, fraction=0.5)
    assert warm.compile
    with pytest.raises(ValueError, match="fraction"):
        decide(10, 0.1, 1.0, fraction=0.0)


def test_a_margin_asks_for_that_many_times_the_cost_saved() -> None:
    # 5000 calls of 36 ms at half the time save 90 s: enough for 60 s, not for 2 x 60 s
    assert decide(5000, 0.036, 60.0, fraction=0.5).compile
    cautious = decide(5000, 0.036, 60.0, fraction=0.5, margin=2.0, what="training")
    assert not cautious.compile
    assert "build ~60.0 s (must save 2x that), saves ~90.0 s over 5000 calls" in cautious.reason
    assert decide(5000, 0.036, 44.0, fraction=0.5, margin=2.0).compile
    with pytest.raises(ValueError, match="margin"):
        decide(10, 0.1, 1.0, margin=0.5)


def test_the_cold_estimate_is_the_median_compile_time_on_record(tmp_path) -> None:
    store = CompiledStore(tmp_path)
    unmeasured = COLD_PREDICT_SECONDS * for_cpu(COLD_PREDICT_SCALE)
    assert cold_estimate(store) == unmeasured
    assert cold_estimate(None) == unmeasured
    assert for_cpu(COLD_PREDICT_SCALE, "AVX512") < for_cpu(COLD_PREDICT_SCALE, "SVE256") == 1.0
    for k, seconds in enumerate((20.0, 30.0, 100.0)):
        record = {"program": "predict", "compile_seconds": seconds}
        (tmp_path / f"{k}.json").write_text(json.dumps(record))
    (tmp_path / "9.json").write_text(json.dumps({"program": "loss", "compile_seconds": 500.0}))
    assert cold_estimate(store) == 30.0


def test_a_gpu_call_is_expected_at_its_measured_fraction_and_compile_time(tmp_path) -> None:
    store = CompiledStore(tmp_path)  # CPU packages' compile times: not a GPU's
    (tmp_path / "0.json").write_text(json.dumps({"program": "predict", "compile_seconds": 20.0}))
    assert compiled_call_model("cuda", 0.0213, 1.3, store) == (
        GPU_COMPILED_FRACTION,
        COLD_GPU_PREDICT_SECONDS,
    )
    assert compiled_call_model("cpu", 0.0213, 1.3, store) == (compiled_fraction(0.0213, 1.3), 20.0)
    # the H200's 12-atom MD call (21.3 ms eager, 4.9 ms compiled): 2000 steps stay eager, 5000
    # compile (the CPU's model, 0.8 of eager after a 35 s compile, kept 5000 eager too)
    fraction, cold = compiled_call_model("cuda", 0.0213, 1.0, None)
    assert not decide(2000, 0.0213, cold, fraction=fraction).compile
    assert decide(5000, 0.0213, cold, fraction=fraction).compile


@pytest.fixture
def aot_eager(monkeypatch):
    """run_md's and relax's compiled potential: aot_eager, no store (no C++ build); the ones
    built, each with the backend it was asked for as ``asked``."""
    built: list[CompiledPotential] = []

    def compiled_potential(model, backend="inductor", **options):
        built.append(CompiledPotential(model, backend="aot_eager", store=None, **options))
        built[-1].asked = backend
        return built[-1]

    monkeypatch.setattr(dynamics, "compiled_potential", compiled_potential)
    monkeypatch.setattr(relax_module, "compiled_potential", compiled_potential)
    return built


def test_a_short_md_run_stays_eager_and_says_why(aot_eager, capsys) -> None:
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    atoms = dynamics.run_md(structure, small_model("conservative"), steps=3, progress=True)
    assert type(atoms.calc.potential).__name__ == "EagerPotential"
    assert "compile off for this 3-step MD" in capsys.readouterr().err
    assert aot_eager[0].graphs_built == 0  # asked what a compile would cost, built nothing


def timings(monkeypatch, eager: float, compiled: float) -> None:
    """run_md measures ``eager`` seconds per call of the eager potential, ``compiled`` per
    call of a compiled one (a ``CompiledPotential``, which has an ``unpadded`` model)."""

    def seconds(atoms, repeats=5):
        return compiled if hasattr(atoms.calc.potential, "unpadded") else eager

    monkeypatch.setattr(dynamics, "call_seconds", seconds)


def test_a_short_run_spends_at_most_a_hundredth_of_its_calls_on_the_decision(
    aot_eager, monkeypatch
) -> None:
    assert [dynamics.timing_calls(n) for n in (3, 50, 199, 200, 500, 2000)] == [1, 1, 1, 2, 5, 5]
    asked: list[int] = []
    monkeypatch.setattr(
        dynamics, "call_seconds", lambda atoms, repeats=5: asked.append(repeats) or 0.01
    )
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    dynamics.run_md(structure, small_model("conservative"), steps=3, progress=False)
    assert asked == [1]


def test_a_compiled_call_is_expected_to_save_the_eager_overhead_and_pay_for_its_padding() -> None:
    # bench_md's cases (stop 27, measured compiled / eager): 8 atoms gain a fifth, 32 and 64
    # atoms little, their work being most of the call and the padding taking its share
    assert compiled_fraction(0.0305, 1.19, "AVX2") == pytest.approx(0.78, abs=0.03)
    assert compiled_fraction(0.1221, 1.21, "AVX2") == pytest.approx(0.97, abs=0.03)
    assert compiled_fraction(0.1073, 1.13, "AVX2") == pytest.approx(0.88, abs=0.03)
    assert compiled_fraction(0.1, 1.0) < compiled_fraction(0.1, 1.2)  # padding costs
    assert compiled_fraction(0.1, 2.0) == 1.0  # never worse than no gain
    assert compiled_fraction(0.0, 1.0) == 1.0


def test_an_avx512_cpu_expects_more_of_a_compiled_call_and_compiles_32_and_64_atom_md() -> None:
    # stops 42-43 on an AVX-512 Xeon (bench_md, measured compiled / eager): 32 and 64 atoms
    # 0.57; the fit keeps the higher per-entry fraction of the two, so it expects about that
    for eager, padding in ((0.051, 1.21), (0.047, 1.08)):
        expected = compiled_fraction(eager, padding, "AVX512")
        assert 0.55 < expected < 0.7
        assert expected < compiled_fraction(eager, padding, "AVX2")
    assert compiled_fraction(0.1, 1.2, "SVE256") == compiled_fraction(0.1, 1.2, "AVX2")
    # stop 44's 2000-step runs (50 eager calls first), priced as run_md prices them before the
    # run: a padded shape of ~1.2 entries per real one (``padding_for`` times MD_SHAPE_SLACK)
    # and the unmeasured cold compile of this CPU. On AVX-512 32 and 64 atoms compile (stop 43
    # measured 7.7x and 8.4x the reference so, stop 44 5.1x and 5.9x eager), on AVX2 not; 8
    # atoms never (their 10 ms calls save ~14 s, less than the build)
    calls = 1950
    cold_avx512 = COLD_PREDICT_SECONDS * for_cpu(COLD_PREDICT_SCALE, "AVX512")
    for eager in (0.051, 0.047):
        on_avx512 = compiled_fraction(eager, 1.2, "AVX512")
        assert decide(calls, eager, cold_avx512, fraction=on_avx512).compile
        on_avx2 = compiled_fraction(eager, 1.2, "AVX2")
        assert not decide(calls, eager, COLD_PREDICT_SECONDS, fraction=on_avx2).compile
    fraction_8 = compiled_fraction(0.0105, 1.27, "AVX512")
    assert not decide(calls, 0.0105, cold_avx512, fraction=fraction_8).compile


def free_compile(monkeypatch, padding: float, eager: float, compiled: float) -> None:
    """A compile costs nothing, eager and compiled calls take the given seconds and the MD
    shape holds ``padding`` entries per real one."""
    monkeypatch.setattr(decide_module, "COLD_PREDICT_SECONDS", 1e-6)
    monkeypatch.setattr(CompiledPotential, "padding_for", lambda self, graphs: padding)
    monkeypatch.setitem(dynamics.MD_COMPILE, "patience", 1)  # the shape is made at call 2
    timings(monkeypatch, eager=eager, compiled=compiled)


def free_compile_md(monkeypatch, padding: float, eager: float, compiled: float, steps: int):
    """run_md under ``free_compile``; the final Atoms."""
    free_compile(monkeypatch, padding, eager, compiled)
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    return dynamics.run_md(structure, small_model("conservative"), steps=steps, progress=True)


def test_an_md_run_whose_padding_takes_the_gain_stays_eager_even_when_compiling_is_free(
    aot_eager, monkeypatch, capsys
) -> None:
    atoms = free_compile_md(monkeypatch, padding=1.8, eager=0.2, compiled=0.1, steps=1000)
    assert type(atoms.calc.potential).__name__ == "EagerPotential"
    assert aot_eager[0].graphs_built == 0
    assert "compile off for this 1000-step MD" in capsys.readouterr().err


def test_an_md_run_where_compiling_pays_runs_compiled(aot_eager, monkeypatch, capsys) -> None:
    atoms = free_compile_md(monkeypatch, padding=1.1, eager=0.2, compiled=0.1, steps=3)
    assert atoms.calc.potential is aot_eager[0]
    assert aot_eager[0].graphs_built == 1
    assert "compile on for this 3-step MD" in capsys.readouterr().err


def test_a_compiled_md_run_slower_than_eager_goes_back_to_eager(
    aot_eager, monkeypatch, capsys
) -> None:
    atoms = free_compile_md(monkeypatch, padding=1.1, eager=0.1, compiled=0.15, steps=3)
    assert type(atoms.calc.potential).__name__ == "EagerPotential"
    assert aot_eager[0].graphs_built == 1  # it was compiled, measured, and set aside
    err = capsys.readouterr().err
    assert "compile on" in err
    assert "compiled calls took 150 ms, no faster than eager 100 ms: the run goes on eager" in err


@pytest.fixture
def compat_md(aot_eager, monkeypatch):
    """compat ``MolecularDynamics`` of a small crystal of several atoms (a thermostat needs a
    temperature to scale) at 300 K, where a compile is free and pays (``free_compile``): a
    function of its further keywords."""
    from fastchgnet.compat import MolecularDynamics

    free_compile(monkeypatch, padding=1.1, eager=0.2, compiled=0.1)
    structure = next(s for s in varied_structures(8, seed=2, max_atoms=6) if len(s) > 1)
    model = small_model("conservative")
    return lambda **kw: MolecularDynamics(structure, model=model, starting_temperature=300, **kw)


def test_the_compat_md_compiles_its_own_calculator_where_it_pays(
    compat_md, aot_eager, capsys
) -> None:
    from fastchgnet.compat.dynamics import CHGNetCalculator

    md = compat_md(thermostat="Berendsen")
    calc = md.atoms.calc
    md.run(3)
    assert md.atoms.calc is calc  # its settings kept
    assert isinstance(calc, CHGNetCalculator)
    assert calc.potential is aot_eager[0]
    assert aot_eager[0].graphs_built == 1
    assert "crystal_fea" in calc.results  # compiled with features: chgnet's keys every run
    assert calc.results["stress"].shape == (3, 3)  # the reference's "efsm", compiled too
    assert "compile on for this 3-step MD" in capsys.readouterr().err
    md.run(3)  # decided once, at the first run, both captures priced
    assert [potential.asked for potential in aot_eager] == ["inductor", "torchscript"]


def test_the_compat_md_logs_crystal_features_compiled_and_stays_eager_when_told_to(
    compat_md, aot_eager, tmp_path
) -> None:
    from fastchgnet.compat import MolecularDynamics

    logged = compat_md(crystal_feas_logfile=str(tmp_path / "feas.pkl"))
    logged.run(3)  # the compiled potential gives the features too: no need to stay eager
    assert logged.atoms.calc.potential is aot_eager[0]
    assert "crystal_fea" in logged.atoms.calc.results
    aot_eager.clear()
    told = compat_md(compiled=False)
    told.run(3)
    assert type(told.atoms.calc.potential).__name__ == "EagerPotential"
    assert aot_eager == []  # no compile was even priced
    with pytest.raises(ValueError, match="compiled=True needs the MD's own calculator"):
        MolecularDynamics(logged.atoms.copy(), model=logged.atoms.calc, compiled=True)


def test_a_compiled_md_run_sizes_its_shape_from_the_calls_its_patience_runs_eagerly(
    aot_eager, monkeypatch
) -> None:
    # the first MD_PATIENCE calls run eagerly; the one shape is made for the largest of them
    # with the MD margin, and the trajectory is the eager one's
    monkeypatch.setitem(dynamics.MD_COMPILE, "patience", 3)
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    model = small_model("conservative")
    run = {"steps": 12, "seed": 4, "progress": False}
    eager = dynamics.run_md(structure, model, compiled=False, **run)
    compiled = dynamics.run_md(structure, model, compiled=True, **run)
    (potential,) = aot_eager
    assert potential.eager_calls == 3
    assert potential.headroom == dynamics.MD_HEADROOM
    assert len(potential.capacities) == 1
    assert potential.padding.batches == 13  # run_md's first call and one per step
    assert compiled.get_potential_energy() == pytest.approx(eager.get_potential_energy(), abs=1e-4)
    assert np.allclose(compiled.positions, eager.positions, atol=1e-5)


def test_asking_what_a_compile_costs_makes_no_shape_and_spends_no_patience() -> None:

    model = small_model("conservative")
    potential = CompiledPotential(model, backend="aot_eager", store=None, patience=2)
    graphs = graphs_for(model.config, varied_structures(1, seed=3, max_atoms=6))
    assert potential.expected_compile_seconds(graphs, stress=False, cold_estimate=9.0) == 9.0
    assert not potential.capacities
    for _ in range(2):
        potential.predict_graphs(graphs, stress=False)
    assert (potential.eager_calls, potential.graphs_built) == (2, 0)
    potential.predict_graphs(graphs, stress=False)
    assert potential.graphs_built == 1
    assert potential.expected_compile_seconds(graphs, stress=False, cold_estimate=9.0) == 0.0


def test_explicit_choices_skip_the_decision(aot_eager, capsys) -> None:
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    atoms = dynamics.run_md(structure, small_model("direct"), steps=2, compiled=False)
    assert type(atoms.calc.potential).__name__ == "EagerPotential"
    assert not aot_eager
    assert "compile" not in capsys.readouterr().err


def test_a_short_relaxation_stays_eager_and_says_why(aot_eager, capsys) -> None:
    from fastchgnet.md import relax

    structures = varied_structures(2, seed=2, max_atoms=4)
    relax(structures, small_model("conservative"), steps=3, progress=True)
    assert "compile off for this relaxation (~3 calls)" in capsys.readouterr().err
    assert aot_eager[0].graphs_built == 0
    assert aot_eager[0].eager_calls == 0  # never asked to predict


def test_a_relaxation_prices_inductor_for_every_shape_and_torchscript_for_one_build(
    monkeypatch, capsys
) -> None:
    monkeypatch.setattr(
        relax_module,
        "compiled_potential",
        lambda model, **options: CompiledPotential(model, **(options | {"store": None})),
    )
    monkeypatch.setattr(decide_module, "compiled_call_model", lambda *args, **kw: (0.9, 10.0))
    structures = varied_structures(2, seed=2, max_atoms=4)
    relax_module.relax(structures, small_model("conservative"), steps=3, progress=True)
    reason = capsys.readouterr().err
    # two builds: any sizes, and one structure once the other has converged
    assert "compile off for this relaxation (~3 calls) with torchscript: build ~20.0 s, saves" in (
        reason
    )
    assert f"[inductor: build ~{10 * relax_module.RELAX_MAX_SHAPES:.1f} s, saves" in reason


def test_a_relaxation_where_compiling_pays_runs_through_the_compiled_potential(
    aot_eager, monkeypatch, capsys
) -> None:
    from fastchgnet.md import relax

    asked = []

    def cost_model(device, eager_seconds, padding, store, backend, background=False):
        asked.append((device, eager_seconds, padding, backend))
        return 0.5, 1e-6  # compiled calls take half as long; compiling costs nothing

    monkeypatch.setattr(decide_module, "compiled_call_model", cost_model)
    structures = varied_structures(2, seed=2, max_atoms=4)
    eager = relax(structures, small_model("conservative"), steps=3, compiled=False)
    chosen = relax(structures, small_model("conservative"), steps=3, progress=True)
    assert "compile on for this relaxation (~3 calls)" in capsys.readouterr().err
    potential, priced = aot_eager  # both captures priced, equal: the first (inductor) runs
    assert (potential.asked, priced.asked) == ("inductor", "torchscript")
    assert potential.padding.batches >= 2  # every call after the second (which decides)
    assert priced.padding.batches == 0
    for a, b in zip(eager, chosen, strict=True):
        assert b.energy == pytest.approx(a.energy, abs=1e-5)
    # the cost model was asked about the shape the deciding call's graphs would make
    assert [backend for *_, backend in asked] == ["inductor", "torchscript"]
    device, eager_seconds, padding, _ = asked[0]
    assert device == "cpu"
    assert eager_seconds > 0
    graphs = graphs_for(potential.config, structures)
    assert padding == pytest.approx(potential.padding_for(graphs))
    assert padding > 1


def test_a_relaxation_stays_eager_where_padded_compiled_calls_would_not_be_faster(
    aot_eager, monkeypatch, capsys
) -> None:
    """Free compiles and no call overheads, on a CPU whose compiled calls do 0.9 of eager's
    work per padded entry: unpadded they would pay, but the padding of the first shape makes
    them slower, so the relaxation stays eager (a flat fraction would have compiled)."""
    from fastchgnet.md import relax
    from fastchgnet.md.relax import RELAX_COMPILE

    monkeypatch.setattr(decide_module, "COLD_PREDICT_SECONDS", 1e-6)
    monkeypatch.setattr(decide_module, "EAGER_CALL_OVERHEAD", 0.0)
    monkeypatch.setattr(decide_module, "COMPILED_CALL_OVERHEAD", 0.0)
    monkeypatch.setattr(decide_module, "COMPILED_WORK_FRACTION", {"AVX2": 0.9})
    structures = varied_structures(2, seed=2, max_atoms=4)
    model = small_model("conservative")
    shape = CompiledPotential(model, backend="aot_eager", store=None, **RELAX_COMPILE)
    assert shape.padding_for(graphs_for(model.config, structures)) * 0.9 > 1
    relax(structures, small_model("conservative"), steps=3, progress=True)
    assert "compile off for this relaxation (~3 calls)" in capsys.readouterr().err
    assert aot_eager[0].graphs_built == 0


def test_padding_for_is_that_of_the_capacity_a_first_call_makes() -> None:
    from fastchgnet.data.capacity import Counts, entries

    model = small_model("conservative")
    potential = CompiledPotential(model, backend="aot_eager", store=None)
    graphs = graphs_for(model.config, varied_structures(2, seed=3, max_atoms=6))
    padding = potential.padding_for(graphs)
    assert not potential.capacities  # asking makes no capacity
    potential.predict_graphs(graphs, stress=False)
    (capacity,) = potential.capacities
    assert padding == pytest.approx(entries(capacity) / Counts.of(graphs).entries)
    assert padding > 1


def test_a_script_call_saves_the_per_op_overhead_and_pays_for_its_padding():
    # stop 45, LiMnO2 MD (AVX-512, 2 threads): eager calls ~10.1 ms, TorchScript ones ~7.2 ms
    # unpadded (stop 44's in a shape of 1.15 padded entries per real one: ~2 ms shorter)
    assert script_fraction(0.0101, 1.0, "AVX512") == pytest.approx(0.71, abs=0.03)
    assert script_fraction(0.0099, 1.15, "AVX512") > script_fraction(0.0099, 1.0, "AVX512")
    # 64 atoms: the padding takes more than it saves
    assert script_fraction(0.05, 1.1, "AVX512") == 1.0
    assert script_fraction(0.0, 1.0) == 1.0
    assert compiled_call_model("cpu", 0.0099, 1.15, None, "torchscript") == (
        script_fraction(0.0099, 1.15),
        SCRIPT_BUILD_SECONDS,
    )
    assert capture_backends("cpu") == ("inductor", "torchscript")
    assert capture_backends("cuda") == ("inductor",)


def prices(inductor: tuple[float, float], script: tuple[float, float]):
    """A ``price`` of the two captures: (fraction, seconds) each, and the capture's name as
    what would run it."""
    return lambda backend: (*{"inductor": inductor, "torchscript": script}[backend], backend)


def test_the_capture_that_saves_most_net_of_its_build_is_chosen():
    # 8-atom MD over 2000 steps: inductor's 25 s build does not pay, TorchScript's 2 s does
    small, runner = choose_capture(1950, 0.0099, "cpu", prices((0.6, 25.0), (0.8, 2.0)), what="MD")
    assert runner == "torchscript"  # what the chosen price named runs
    assert small.compile
    assert small.backend == "torchscript"
    assert small.reason.startswith("compile on for this MD with torchscript: build ~2.0 s, saves")
    # 64 atoms: TorchScript gains nothing, inductor pays
    large, runner = choose_capture(1950, 0.05, "cpu", prices((0.6, 25.0), (1.0, 2.0)))
    assert runner == "inductor"
    assert large.compile
    assert large.backend == "inductor"
    assert large.net_seconds == pytest.approx(1950 * 0.05 * 0.4 - 25.0)
    assert large.reason.endswith("[torchscript: build ~2.0 s, saves ~0.0 s]")  # the other's price
    # a few calls: neither pays, and the reason names the cheaper loss
    short, _ = choose_capture(3, 0.0099, "cpu", prices((0.6, 25.0), (0.8, 2.0)), what="3-step MD")
    assert not short.compile
    assert short.reason.startswith("compile off for this 3-step MD with torchscript")
    # on a GPU only inductor is priced
    asked = []
    gpu, _ = choose_capture(5000, 0.02, "cuda", lambda b: asked.append(b) or (0.3, 45.0, b))
    assert asked == ["inductor"]
    assert gpu.compile


def test_a_short_md_run_of_a_small_cell_runs_torchscript_by_default(aot_eager, monkeypatch, capsys):
    # eager calls of 12 ms where inductor's build would cost 35 s: only TorchScript pays
    timings(monkeypatch, eager=0.012, compiled=0.001)
    monkeypatch.setattr(dynamics, "MD_COMPILE", dynamics.MD_COMPILE | {"patience": 2})
    monkeypatch.setattr("fastchgnet.compile.decide.SCRIPT_BUILD_SECONDS", 0.1)
    monkeypatch.setattr(CompiledPotential, "padding_for", lambda self, graphs: 1.1)
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    model = small_model("conservative")
    run = {"steps": 400, "seed": 4, "progress": True}
    atoms = dynamics.run_md(structure, model, **run)
    assert "compile on for this 400-step MD with torchscript" in capsys.readouterr().err
    inductor, script = aot_eager
    assert atoms.calc.potential is script
    assert (inductor.asked, script.asked) == ("inductor", "torchscript")
    assert (inductor.graphs_built, script.graphs_built) == (0, 1)
    eager = dynamics.run_md(structure, model, compiled=False, **run)
    np.testing.assert_allclose(atoms.positions, eager.positions, atol=1e-8)


def test_a_torchscript_md_run_slower_than_eager_goes_back_to_eager(monkeypatch, capsys):
    # the real TorchScript potential, which makes no capacity: timed after its first build
    # (built in place: a background build may outlast this short run on a busy machine)
    monkeypatch.setattr(
        dynamics,
        "compiled_potential",
        lambda model, **options: CompiledPotential(
            model, **(options | {"store": None, "background": False})
        ),
    )
    timings(monkeypatch, eager=0.012, compiled=0.05)
    monkeypatch.setattr("fastchgnet.compile.decide.SCRIPT_BUILD_SECONDS", 0.1)
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    atoms = dynamics.run_md(structure, small_model("conservative"), steps=400, seed=4)
    err = capsys.readouterr().err
    assert "compile on for this 400-step MD with torchscript" in err
    assert "compiled calls took 50 ms, no faster than eager 12 ms: the run goes on eager" in err
    assert type(atoms.calc.potential).__name__ == "EagerPotential"


def test_a_compiled_md_run_is_timed_against_eager_side_by_side(monkeypatch, capsys):
    """The machine slows down between the decision (eager 12 ms) and the check after the
    build (eager 30 ms, compiled 20 ms): the check compared 20 ms with the decision's 12 ms
    and sent the faster compiled run back to eager; now it times both in turns."""
    monkeypatch.setattr(
        dynamics,
        "compiled_potential",
        lambda model, **options: CompiledPotential(
            model, **(options | {"store": None, "background": False})
        ),
    )
    decided: list[bool] = []

    def seconds(atoms, repeats=5):
        if not decided:  # the decision's eager timing
            decided.append(True)
            return 0.012
        return 0.020 if hasattr(atoms.calc.potential, "unpadded") else 0.030

    monkeypatch.setattr(dynamics, "call_seconds", seconds)
    monkeypatch.setattr("fastchgnet.compile.decide.SCRIPT_BUILD_SECONDS", 0.1)
    monkeypatch.setattr("fastchgnet.compile.decide.script_fraction", lambda *args: 0.7)
    structure = varied_structures(1, seed=2, max_atoms=4)[0]
    atoms = dynamics.run_md(structure, small_model("conservative"), steps=400, seed=4)
    assert "compile on for this 400-step MD with torchscript" in capsys.readouterr().err
    assert hasattr(atoms.calc.potential, "unpadded")  # still the compiled potential


def test_an_amd_cpu_with_avx512_is_priced_as_measured_there(monkeypatch) -> None:
    """Stop 51's AVX-512 AMD EPYC: TorchScript MD steps about 0.81 of eager at 8, 32 and 64
    atoms, inductor's 0.85 and 0.73 on 32 and 64 atoms (after a cold build of 25-50 s): its
    2000-step runs of 32 and 64 atoms choose TorchScript there, where the Xeon's fit (priced
    for "AVX512") chooses inductor. A table without an entry for it takes the AVX2 one."""
    monkeypatch.setattr(decide_module.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for vendor, kind in (("AuthenticAMD", "AVX512-AMD"), ("GenuineIntel", "AVX512")):
        monkeypatch.setattr(decide_module, "cpu_vendor", lambda v=vendor: v)
        decide_module.cpu_kind.cache_clear()
        assert decide_module.cpu_kind() == kind
    decide_module.cpu_kind.cache_clear()
    assert script_fraction(0.0575, 1.0, "AVX512-AMD") == pytest.approx(46.7 / 57.5, abs=0.02)
    assert script_fraction(0.0586, 1.0, "AVX512-AMD") == pytest.approx(47.6 / 58.6, abs=0.02)
    assert compiled_fraction(0.0594, 1.21, "AVX512-AMD") == pytest.approx(50.3 / 59.4, abs=0.02)
    assert for_cpu(COLD_PREDICT_SCALE, "AVX512-AMD") == for_cpu(COLD_PREDICT_SCALE, "AVX2")
    for eager in (0.057, 0.050):  # the eager calls run_md timed before the 32 / 64-atom runs
        chosen = {}
        for kind in ("AVX512-AMD", "AVX512"):

            def price(backend: str, kind=kind, eager=eager):
                if backend == "inductor":
                    cold = COLD_PREDICT_SECONDS * for_cpu(COLD_PREDICT_SCALE, kind)
                    return compiled_fraction(eager, 1.2, kind), cold, backend
                return script_fraction(eager, 1.0, kind), SCRIPT_BUILD_SECONDS, backend

            decision, chosen[kind] = choose_capture(1950, eager, "cpu", price)
            assert decision.compile
        assert chosen == {"AVX512-AMD": "torchscript", "AVX512": "inductor"}
