"""``fastchgnet md --compile`` and ``fastchgnet relax --compile`` run through a CompiledPotential
(here with the aot_eager backend, swapped in so the test needs no C++ compile)."""

from __future__ import annotations

import importlib

import pytest

from fastchgnet.cli import main
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md import calculator

relax_module = importlib.import_module("fastchgnet.md.relax")  # the package exports relax()
dynamics = importlib.import_module("fastchgnet.md.dynamics")


@pytest.fixture
def aot_eager_potentials(monkeypatch):
    """Every ``compiled=True`` path builds an aot_eager CompiledPotential (a TorchScript one
    stays TorchScript: it builds in seconds); the ones built."""
    built: list[CompiledPotential] = []

    def compiled_potential(model, backend="inductor", **options):
        backend = "torchscript" if backend == "torchscript" else "aot_eager"
        options["background"] = False  # built at the first call (tests/compile/test_background)
        options["store"] = None  # built here, whatever another test kept
        built.append(CompiledPotential(model, backend=backend, **options))
        return built[-1]

    monkeypatch.setattr(calculator, "compiled_potential", compiled_potential)
    monkeypatch.setattr(dynamics, "compiled_potential", compiled_potential)
    monkeypatch.setattr(relax_module, "compiled_potential", compiled_potential)
    return built


@pytest.mark.parametrize(("flag", "backend"), [("on", "aot_eager"), ("torchscript", "torchscript")])
def test_md_compile_flag_runs_one_compiled_graph(tmp_path, aot_eager_potentials, flag, backend):
    pytest.importorskip("chgnet")
    from ase.io import read

    path = tmp_path / "s.cif"
    varied_structures(1, seed=2, max_atoms=4)[0].to(filename=str(path))
    out = tmp_path / "md.extxyz"
    argv = ["md", str(path), "-o", str(out), "--steps", "6", "--loginterval", "3"]
    argv += ["--compile", flag]
    assert main([*argv, "--quiet", "--seed", "0"]) == 0
    assert len(read(out, index=":")) == 3
    (potential,) = aot_eager_potentials
    assert potential.backend == backend
    assert potential.captured[False, False].stats.graphs == 1  # the forces' one graph
    # the written frames' stress: eager under a padded capture, a graph of its own under
    # TorchScript once the force graph is there (md.calculator.stress_runs_eagerly)
    assert potential.captured[True, False].stats.graphs == (backend == "torchscript")


def test_relax_compile_flag_uses_one_shared_potential(tmp_path, aot_eager_potentials):
    pytest.importorskip("chgnet")
    from ase.io import read

    paths = []
    for k, structure in enumerate(varied_structures(2, seed=2, max_atoms=4)):
        paths.append(tmp_path / f"s{k}.cif")
        structure.to(filename=str(paths[-1]))
    out = tmp_path / "relaxed.extxyz"
    argv = ["relax", *map(str, paths), "-o", str(out), "--steps", "3", "--compile", "on"]
    argv += ["--quiet"]
    assert main(argv) == 1  # written, not converged in 3 steps
    assert len(read(out, index=":")) == 2
    (potential,) = aot_eager_potentials
    assert potential.padding.batches == 4  # both structures, one call a step, 3 steps
