"""The README's "Coming from chgnet" section names what the compat layer does not do: the
model arguments it refuses, chgnet's graph fields it lacks, chgnet names it does not offer."""

from __future__ import annotations

from pathlib import Path

import pytest

import fastchgnet.compat

README = Path(__file__).resolve().parents[2] / "README.md"
REFUSED_ARGS = {
    "update_bond": False,
    "update_angle": False,
    "is_intensive": False,
    "mlp_first": False,
    "conv_norm": "layer",
    "gMLP_norm": "batch",
}
#: chgnet names a script imports that compat does not offer: each listed with what to use
NOT_OFFERED = ("CrystalGraph", "BatchedGraph", "collate_graphs", "CIFData", "GraphData",
               "StructureJsonData", "AtomRef")  # fmt: skip
GRAPH_FIELDS = ("atom_graph", "bond_graph", "neighbor_image", "directed2undirected")


def _section() -> str:
    text = README.read_text()
    return text[text.index("## Coming from chgnet") : text.index("## Workflows")]


def test_refused_model_args_are_refused_and_listed():
    from fastchgnet.compat import CHGNet

    section = _section()
    for key, value in REFUSED_ARGS.items():
        assert f"`{key}={value!r}".replace("'", '"') in section, key
        with pytest.raises(ValueError, match=key):
            CHGNet(**{key: value})
    assert '`conv_norm="layer"|"batch"`' in section


def test_missing_graph_fields_and_names_are_listed():
    section = _section()
    for name in GRAPH_FIELDS + NOT_OFFERED:
        assert f"`{name}`" in section, name
    for name in NOT_OFFERED[1:]:  # CrystalGraph is ours, under fastchgnet.data.graph
        assert not hasattr(fastchgnet.compat, name), name
