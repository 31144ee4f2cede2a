"""Every public name of each chgnet module that compat mirrors imports from the matching
compat module (``from chgnet.model.dynamics import MolecularDynamics`` could not become
``from fastchgnet.compat.dynamics import MolecularDynamics``), except the names README.md's
"Coming from chgnet" documents as unsupported (``UNSUPPORTED``; the test reads README.md for
each)."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

#: chgnet module -> the compat module that mirrors it
MIRRORS = {
    "chgnet.model": "fastchgnet.compat",
    "chgnet.model.model": "fastchgnet.compat.model",
    "chgnet.model.dynamics": "fastchgnet.compat.dynamics",
    "chgnet.trainer": "fastchgnet.compat.trainer",
    "chgnet.trainer.trainer": "fastchgnet.compat.trainer",
    "chgnet.data.dataset": "fastchgnet.compat.training",
    "chgnet.utils": "fastchgnet.compat.utils",
    "chgnet.graph": "fastchgnet.compat.graph",
}
#: names README.md documents as not offered, per chgnet module
UNSUPPORTED = {
    "chgnet.model.model": {
        "AngleEncoder", "AngleUpdate", "AtomConv", "AtomEmbedding", "AtomRef", "BatchedGraph",
        "BondConv", "BondEncoder", "GatedMLP", "GraphAttentionReadOut", "GraphPooling", "MLP",
        "find_normalization", "module_dir",
    },
    "chgnet.trainer.trainer": {"CombinedLoss", "LogEachBatch", "LogEachEpoch", "wandb"},
    "chgnet.data.dataset": {"CIFData", "GraphData", "StructureJsonData", "collate_graphs"},
}  # fmt: skip
README = Path(__file__).parents[2] / "README.md"


def public_names(module) -> set[str]:
    """chgnet's own public names in ``module``: classes and functions chgnet defines and its
    module-level values (third-party imports, typing aliases and ``TYPE_CHECKING`` left out)."""
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or name == "TYPE_CHECKING" or inspect.ismodule(value):
            continue
        if inspect.isclass(value) or inspect.isroutine(value):
            if not getattr(value, "__module__", "").startswith("chgnet"):
                continue
        elif type(value).__module__ in ("typing", "__future__"):
            continue
        names.add(name)
    return names


@pytest.mark.parametrize(("reference", "compat"), MIRRORS.items())
def test_compat_module_offers_every_public_name_of_its_chgnet_module(reference, compat):
    pytest.importorskip("chgnet")
    wanted = public_names(importlib.import_module(reference)) - UNSUPPORTED.get(reference, set())
    module = importlib.import_module(compat)
    missing = sorted(name for name in wanted if not hasattr(module, name))
    assert not missing, f"{compat} lacks {reference}'s {missing}"


def test_the_unsupported_names_are_in_the_readme():
    section = README.read_text().split("## Coming from chgnet")[1].split("\n## ")[0]
    undocumented = sorted(
        name for names in UNSUPPORTED.values() for name in names if f"`{name}`" not in section
    )
    assert not undocumented


def test_chgnet_dynamics_import_line_works_with_compat():
    code = (
        "from fastchgnet.compat.dynamics import MolecularDynamics, EquationOfState, "
        "CrystalFeasObserver, StructOptimizer, CHGNetCalculator, TrajectoryObserver"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
