"""TorchScript graphs in the on-disk store (store.ScriptShelf): a new potential of the same
config, program and thread count loads them instead of building, for any weights, and a
damaged file is reported, removed and built again."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fastchgnet.cli.commands import compile_summary
from fastchgnet.compile import background
from fastchgnet.compile.potential import CompiledPotential
from fastchgnet.compile.store import SCRIPT_LOAD_SECONDS, CompiledStore, ScriptShelf
from fastchgnet.data.random_crystals import varied_structures
from fastchgnet.md.calculator import Calculator, as_atoms
from fastchgnet.model.potential import EagerPotential
from tests.compile.conftest import small_model

COLD = 9.0  # the cold estimate handed to expected_compile_seconds


def graphs_of(model, n: int, seed: int = 3) -> list:
    return [Calculator(model).graph(as_atoms(s)) for s in varied_structures(n, seed=seed)]


def kept_files(store: CompiledStore) -> list:
    return sorted((store.root / "torchscript").rglob("*.pt"))


def assert_like_eager(model, graphs, prediction) -> None:
    eager = EagerPotential(model).predict_graphs(graphs, stress=False)
    for name in ("energy", "forces", "magmoms"):
        expected = getattr(eager, name).detach()
        np.testing.assert_allclose(getattr(prediction, name), expected, atol=1e-9)


def test_a_kept_graph_serves_a_new_potential_of_any_weights_without_a_build(tmp_path):
    store = CompiledStore(tmp_path)
    model = small_model("conservative", torch.float64).eval()
    pair = graphs_of(model, 2)
    first = CompiledPotential(model, backend="torchscript", store=store)
    assert first.expected_compile_seconds(pair, stress=False, cold_estimate=COLD) == COLD
    first.predict_graphs(pair, stress=False)
    assert (first.graphs_built, first.graphs_loaded) == (1, 0)
    assert len(kept_files(store)) == 1

    tuned = small_model("conservative", torch.float64).eval()  # other weights, same config
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.mul_(1.1)
    second = CompiledPotential(tuned, backend="torchscript", store=store)
    assert second.expected_compile_seconds(pair, stress=False, cold_estimate=COLD) == (
        SCRIPT_LOAD_SECONDS
    )
    assert_like_eager(tuned, pair, second.predict_graphs(pair, stress=False))
    assert (second.graphs_built, second.graphs_loaded) == (0, 1)
    assert second.has_graphs
    assert " 0 graph(s) built in 0.0 s, 1 loaded from the store;" in compile_summary(second)

    single = graphs_of(model, 1, seed=5)  # one structure: outside the kept graph's guard
    fresh = CompiledPotential(tuned, backend="torchscript", store=store)
    assert fresh.expected_compile_seconds(single, stress=False, cold_estimate=COLD) == COLD
    # this process's graph does not serve it either: its guard, not only its program, decides
    assert second.expected_compile_seconds(single, stress=False, cold_estimate=COLD) == COLD
    assert second.expected_compile_seconds(pair, stress=False, cold_estimate=COLD) == 0.0
    assert_like_eager(tuned, single, second.predict_graphs(single, stress=False))
    assert (second.graphs_built, second.graphs_loaded) == (1, 1)
    assert second.expected_compile_seconds(single, stress=False, cold_estimate=COLD) == 0.0
    assert len(kept_files(store)) == 2
    third = CompiledPotential(model, backend="torchscript", store=store)
    third.predict_graphs(single, stress=False)
    assert (third.graphs_built, third.graphs_loaded) == (0, 2)


def test_the_compile_decision_and_the_build_read_the_kept_files_once(tmp_path, monkeypatch):
    from fastchgnet.compile import store as store_module

    store = CompiledStore(tmp_path)
    model = small_model("conservative", torch.float64).eval()
    pair = graphs_of(model, 2)
    CompiledPotential(model, backend="torchscript", store=store).predict_graphs(pair, stress=False)
    reads = []
    read_kept = store_module.read_kept
    monkeypatch.setattr(
        store_module, "read_kept", lambda path, *rest: reads.append(path) or read_kept(path, *rest)
    )
    later = CompiledPotential(model, backend="torchscript", store=store)
    assert later.expected_compile_seconds(pair, stress=False, cold_estimate=COLD) == (
        SCRIPT_LOAD_SECONDS
    )
    assert_like_eager(model, pair, later.predict_graphs(pair, stress=False))
    assert (later.graphs_built, later.graphs_loaded, len(reads)) == (0, 1, 1)
    single = graphs_of(model, 1, seed=5)  # outside the kept guard: built, kept, and known
    assert later.expected_compile_seconds(single, stress=False, cold_estimate=COLD) == COLD
    later.predict_graphs(single, stress=False)
    assert (later.graphs_built, len(kept_files(store)), len(reads)) == (1, 2, 1)
    captured = later.captured[False, False]
    (key,) = captured._compiled
    assert len(captured._shelf(key).graphs()) == 2  # the one kept here too, read from memory
    assert len(reads) == 1


def test_a_shelf_that_cannot_list_its_folder_asks_again_and_one_that_could_does_not(
    tmp_path, monkeypatch, caplog
):
    shelf = ScriptShelf(CompiledStore(tmp_path), {"program": "a test's"})
    shelf.folder.mkdir(parents=True)
    listings = []

    def listing(folder, pattern):
        listings.append(pattern)
        if len(listings) == 1:
            raise PermissionError("denied")
        return iter(())

    monkeypatch.setattr(Path, "glob", listing)
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        assert shelf.graphs() == []
    assert "cannot list" in caplog.text
    assert shelf.graphs() == []
    assert shelf.graphs() == []
    assert len(listings) == 2  # the failure is not remembered; the empty folder is


def test_a_graph_kept_for_other_threads_or_outputs_is_not_used(tmp_path):
    store = CompiledStore(tmp_path)
    model = small_model("conservative", torch.float64).eval()
    pair = graphs_of(model, 2)
    CompiledPotential(model, backend="torchscript", store=store).predict_graphs(pair, stress=False)
    potential = CompiledPotential(model, backend="torchscript", store=store)
    assert potential.expected_compile_seconds(pair, stress=True, cold_estimate=COLD) == COLD
    threads = torch.get_num_threads()
    try:  # the model's gathers take another form on another thread count
        torch.set_num_threads(1 if threads > 1 else 2)
        assert potential.expected_compile_seconds(pair, stress=False, cold_estimate=COLD) == COLD
    finally:
        torch.set_num_threads(threads)
    assert potential.expected_compile_seconds(pair, stress=False, cold_estimate=COLD) == (
        SCRIPT_LOAD_SECONDS
    )


def test_a_damaged_kept_graph_is_reported_removed_and_built_again(tmp_path, caplog):
    store = CompiledStore(tmp_path)
    model = small_model("conservative", torch.float64).eval()
    pair = graphs_of(model, 2)
    CompiledPotential(model, backend="torchscript", store=store).predict_graphs(pair, stress=False)
    (path,) = kept_files(store)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    potential = CompiledPotential(model, backend="torchscript", store=store)
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        assert_like_eager(model, pair, potential.predict_graphs(pair, stress=False))
    assert f"compiled store: {path} is unusable" in caplog.text
    assert (potential.graphs_built, potential.graphs_loaded) == (1, 0)
    again = CompiledPotential(model, backend="torchscript", store=store)
    again.predict_graphs(pair, stress=False)  # the rebuilt file is whole
    assert (again.graphs_built, again.graphs_loaded) == (0, 1)


def test_a_kept_file_unreadable_is_skipped_and_a_damaged_one_removed_even_if_removal_fails(
    tmp_path, monkeypatch, caplog
):
    """store.read_kept, the one reader of the store's traces and TorchScript graphs: a file
    that cannot be opened is skipped and left alone; a damaged one is reported and removed,
    and a removal that fails (read-only store) does not stop the run."""
    from pathlib import Path

    from fastchgnet.compile.store import read_kept
    from fastchgnet.files import write_checksummed

    good = tmp_path / "good.pt"
    write_checksummed(good, {"x": 1}, "kind", 1)
    assert read_kept(good, "kind", 1) == {"x": 1}
    closed = tmp_path / "closed.pt"
    closed.mkdir()  # opening it raises IsADirectoryError, an OSError like EACCES
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(good.read_bytes()[:-50])
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        assert read_kept(tmp_path / "missing.pt", "kind", 1) is None
        assert not caplog.text  # no file: nothing to report
        assert read_kept(closed, "kind", 1) is None
        assert closed.is_dir()
        assert f"cannot read {closed}" in caplog.text

        def refused(self, missing_ok=False):
            raise PermissionError(13, "read-only store")

        with monkeypatch.context() as patch:
            patch.setattr(Path, "unlink", refused)
            assert read_kept(damaged, "kind", 1) is None
        assert damaged.exists()
        assert read_kept(damaged, "kind", 1) is None
    assert not damaged.exists()
    assert caplog.text.count(f"{damaged} is unusable") == 2
    assert read_kept(good, "other-kind", 1) is None  # foreign: removed
    assert not good.exists()


INJECTED = "s0=().__class__.__base__.__subclasses__()"


@pytest.mark.parametrize(
    "state",
    [
        {"text": "__import__('os').getpid() > 0"},
        {"text": "s0.__class__ is int"},
        {"text": "open('/etc/passwd') is None"},
        {"text": "(lambda: True)()"},
        {"text": "s0 >= 2 and sizes[0] == 1"},
        {"text": "max(s0, key=abs) > 1"},
        {"text": "math.pi > 3"},
        {"text": "math.floor.__self__ is None"},
        {"text": "[c for c in (s0,)] == [s0]"},
        {"text": "'text' == 'text'"},
        {"text": "s0 >= 2; True"},
        {"text": "2 ** 10 ** 10 > s0"},
        {"text": "s0 ** s0 > 1"},
        {"text": "((9 ** 8) ** 8) ** 8 > s0"},
        {"text": "True", "arguments": [INJECTED]},
        {"text": "True", "arguments": ["s0", "s0"], "positions": [0, 1]},
        {"text": "True", "arguments": ["lambda"]},
        {"text": "True", "positions": [-1]},
        {"text": "True", "positions": [0, 1]},
        {"text": 3},
    ],
)
def test_a_stored_size_guard_runs_only_size_arithmetic(state, caplog):
    """A guard read back from the store is data: anything but arithmetic and comparisons of
    its own sizes (floor, ceiling, max, min, small constant powers) in distinct names at input
    positions is refused before any of it is compiled."""
    from fastchgnet.compile.size_guard import SizeGuard

    def guard(text: str, sizes: list[int]) -> bool:
        names = [f"s{k}" for k in range(len(sizes))]
        made = SizeGuard.from_state(
            {"text": text, "arguments": names, "positions": list(range(len(sizes)))}
        )
        return made([torch.empty(size, 0) for size in sizes])

    printed = "(s0 >= 2) and (s1 == 1 or s1 == s0) and (math.floor(s0 / 2) <= s1)"
    assert guard(printed, [4, 4])
    assert not guard(printed, [4, 1])
    assert guard("max(s0, 3) != 4 and s0 ** 2 < math.inf", [3])
    assert not guard("max(s0, 3) != 4", [4])
    assert not guard("s0 // 0 == 1", [3])  # a guard that fails to evaluate holds nothing
    failing = SizeGuard.from_state({"text": "s0 // 0 == 1", "arguments": ["s0"], "positions": [0]})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        assert not any(failing([torch.empty(3, 0)]) for _ in range(3))
    assert caplog.text.count("a size guard failed") == 1  # said once, not every call
    assert "_failed" not in failing.__getstate__()
    with pytest.raises(ValueError, match="size guard"):
        SizeGuard.from_state({"arguments": ["s0"], "positions": [0], **state})


def test_a_kept_graph_whose_guard_says_more_than_sizes_is_not_run(tmp_path, caplog):
    """A store file, checksummed but with a guard that would run other code, is reported and
    its graph is built again instead of loaded."""
    from fastchgnet.compile.store import SCRIPT_FORMAT, SCRIPT_VERSION
    from fastchgnet.files import read_checksummed, write_checksummed

    store = CompiledStore(tmp_path)
    model = small_model("conservative", torch.float64).eval()
    pair = graphs_of(model, 2)
    CompiledPotential(model, backend="torchscript", store=store).predict_graphs(pair, stress=False)
    (path,) = kept_files(store)
    _, payload = read_checksummed(path, SCRIPT_FORMAT, [SCRIPT_VERSION])
    payload["guard"]["text"] = "__import__('os').getpid() > 0"
    write_checksummed(path, payload, SCRIPT_FORMAT, SCRIPT_VERSION)
    potential = CompiledPotential(model, backend="torchscript", store=store)
    with caplog.at_level(logging.WARNING, logger="fastchgnet.compile"):
        assert potential.expected_compile_seconds(pair, stress=False, cold_estimate=COLD) == COLD
        assert_like_eager(model, pair, potential.predict_graphs(pair, stress=False))
    assert "size guard" in caplog.text
    assert (potential.graphs_built, potential.graphs_loaded) == (1, 0)


@pytest.mark.skipif(not background.available_in_background(), reason="builds in place here")
def test_a_graph_built_in_the_background_is_kept_too(tmp_path):
    store = CompiledStore(tmp_path)
    model = small_model("conservative", torch.float64).eval()
    pair = graphs_of(model, 2)
    potential = CompiledPotential(model, backend="torchscript", store=store, background=True)
    potential.predict_graphs(pair, stress=False)  # eager; the child builds
    assert kept_files(store) == []
    (program,) = potential.captured[False, False]._compiled.values()
    program.wait()
    assert len(kept_files(store)) == 1
    later = CompiledPotential(model, backend="torchscript", store=store, background=True)
    assert_like_eager(model, pair, later.predict_graphs(pair, stress=False))
    assert (later.graphs_built, later.graphs_loaded) == (0, 1)
    assert not background.busy()  # nothing to build: no child started


def test_a_relaxation_prices_the_graphs_the_store_keeps_as_loads(tmp_path, monkeypatch, capsys):
    import importlib

    relax_module = importlib.import_module("fastchgnet.md.relax")
    decide_module = importlib.import_module("fastchgnet.compile.decide")
    store = CompiledStore(tmp_path)
    model = small_model("conservative")
    structures = varied_structures(2, seed=2, max_atoms=4)
    graphs = [Calculator(model).graph(as_atoms(s)) for s in structures]
    monkeypatch.setattr(decide_module, "compiled_call_model", lambda *args, **kw: (0.9, 10.0))
    monkeypatch.setattr(
        relax_module,
        "compiled_potential",
        lambda model, **options: CompiledPotential(model, **(options | {"store": store})),
    )
    run = {"steps": 3, "progress": True}
    relax_module.relax(structures, model, **run)
    assert "with torchscript: build ~20.0 s" in capsys.readouterr().err  # two builds
    kept = CompiledPotential(model, backend="torchscript", store=store)
    kept.predict_graphs(graphs, stress=True)  # what the relaxation needs: both, then one
    kept.predict_graphs(graphs[:1], stress=True)
    assert kept.graphs_built == 2
    relax_module.relax(structures, model, **run)
    assert f"with torchscript: build ~{2 * SCRIPT_LOAD_SECONDS:.1f} s" in (capsys.readouterr().err)
