"""``model.graph_converter`` answers as chgnet's CrystalGraphConverter: cutoffs, algorithm,
repr, and ``graph_id`` / ``mp_id`` kept on the graph it returns."""

from __future__ import annotations

import warnings

import pytest

from fastchgnet.compat import CHGNet
from fastchgnet.compat.graph import CrystalGraphConverter


@pytest.mark.parametrize("name", ["0.3.0", "0.2.0"])
def test_converter_attributes_and_repr_are_the_references(chgnet_ref, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet.load(model_name=name, use_device="cpu", verbose=False)
        ours = CHGNet.load(name, use_device="cpu", verbose=False)
    theirs, mine = reference.graph_converter, ours.graph_converter
    assert mine.atom_graph_cutoff == theirs.atom_graph_cutoff
    assert mine.bond_graph_cutoff == theirs.bond_graph_cutoff
    assert mine.algorithm == theirs.algorithm
    assert repr(mine) == repr(theirs)
    assert mine.as_dict() == theirs.as_dict()


def test_graph_keeps_graph_id_and_mp_id(chgnet_ref, compat_model, limno2):
    graph = compat_model.graph_converter(limno2, graph_id="g-7", mp_id="mp-18767")
    theirs = chgnet_ref.CHGNet.load(use_device="cpu", verbose=False).graph_converter(
        limno2, graph_id="g-7", mp_id="mp-18767"
    )
    assert (graph.graph_id, graph.mp_id) == (theirs.graph_id, theirs.mp_id)
    assert graph.composition == theirs.composition
    plain = compat_model.graph_converter(limno2)
    assert (plain.graph_id, plain.mp_id) == (None, None)
    assert compat_model.predict_graph(graph)["e"] == compat_model.predict_graph(plain)["e"]


def test_standalone_converter_takes_chgnets_arguments(limno2):
    converter = CrystalGraphConverter(atom_graph_cutoff=5, bond_graph_cutoff=None)
    assert (converter.atom_graph_cutoff, converter.bond_graph_cutoff) == (5, 5)
    assert converter(limno2).atom_cutoff == 5
    with pytest.raises(ValueError, match="algorithm='cython'"):
        CrystalGraphConverter(algorithm="cython")
