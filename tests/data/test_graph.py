"""Graph building: same edges and angles as the reference converter; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from fastchgnet import StructureError, build_graph
from fastchgnet.data.graph import angles_from_bonds
from fastchgnet.data.random_crystals import no_angle_structure, varied_structures

VARIED = varied_structures(40, seed=1, max_atoms=48)


def _reference_sets(structure: Structure) -> tuple[set, set]:
    """(directed edges, angles) of the reference converter, keyed by (i, j, image)."""
    converter = pytest.importorskip("chgnet.graph").CrystalGraphConverter(
        atom_graph_cutoff=6, bond_graph_cutoff=3, algorithm="fast"
    )
    graph = converter(structure)
    pairs = graph.atom_graph.numpy()
    images = graph.neighbor_image.numpy().round().astype(int)
    keys = [(int(a), int(b), tuple(im)) for (a, b), im in zip(pairs, images.tolist(), strict=False)]
    angles = {(keys[row[2]], keys[row[4]]) for row in graph.bond_graph.numpy()}
    return set(keys), angles


def _our_sets(structure: Structure, backend: str = "pymatgen") -> tuple[set, set]:
    graph = build_graph(structure, backend=backend)
    keys = list(
        zip(
            graph.edge_centres().tolist(),
            graph.edge_neighbours().tolist(),
            map(tuple, graph.edge_images().tolist()),
            strict=False,
        )
    )
    angles = {(keys[e1], keys[e2]) for e1, e2 in graph.angle_edges.tolist()}
    assert len(keys) == len(set(keys)), "each directed edge appears once"
    return set(keys), angles


@pytest.mark.parametrize("index", range(len(VARIED)))
def test_edges_and_angles_match_reference_converter(index):
    ref_edges, ref_angles = _reference_sets(VARIED[index])
    edges, angles = _our_sets(VARIED[index])
    assert edges == ref_edges
    assert angles == ref_angles


def test_edges_and_angles_match_reference_on_paper_structures(reference_structures):
    for structure in reference_structures:
        assert _our_sets(structure) == _reference_sets(structure)


def test_vesin_backend_finds_the_same_graph():
    for structure in VARIED[:10]:
        assert _our_sets(structure, "vesin") == _our_sets(structure, "pymatgen")


def test_reverse_edge_has_opposite_image_and_direction():
    graph = build_graph(VARIED[3])
    n = graph.n_bonds
    centres, neighbours, images = graph.edge_centres(), graph.edge_neighbours(), graph.edge_images()
    np.testing.assert_array_equal(centres[:n], neighbours[n:])
    np.testing.assert_array_equal(images[:n], -images[n:])


def test_angle_pairs_share_centre_and_are_short():
    graph = build_graph(VARIED[5])
    centres = graph.edge_centres()
    e1, e2 = graph.angle_edges.T
    assert (centres[e1] == centres[e2]).all()
    assert (e1 != e2).all()
    lengths = np.concatenate([graph.bond_lengths()] * 2)
    assert (lengths[e1] < 3.0).all()
    assert (lengths[e2] < 3.0).all()


def test_angles_from_bonds_counts_ordered_pairs_per_centre():
    # star: centre 0 with three short bonds and one long one -> 3 * 2 ordered pairs at atom 0
    bonds = np.array([[0, 1], [0, 2], [3, 0], [0, 4]])
    lengths = np.array([1.0, 2.0, 2.5, 4.0])
    angles = angles_from_bonds(bonds, lengths, 3.0)
    assert angles.shape == (6, 2)
    assert set(map(tuple, angles.tolist())) == {(0, 1), (0, 6), (1, 0), (1, 6), (6, 0), (6, 1)}


def test_structure_without_angles_has_empty_angle_array():
    graph = build_graph(no_angle_structure())
    assert graph.n_bonds > 0
    assert graph.angle_edges.shape == (0, 2)


def test_ase_atoms_give_the_same_graph_as_structure():
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = VARIED[7]
    atoms = AseAtomsAdaptor.get_atoms(structure)
    a, b = build_graph(structure), build_graph(atoms)
    np.testing.assert_allclose(a.frac_coords, b.frac_coords, atol=1e-10)
    np.testing.assert_array_equal(a.bond_atoms, b.bond_atoms)
    np.testing.assert_array_equal(a.angle_edges, b.angle_edges)


def test_isolated_atom_is_an_error_naming_structure_and_atom():
    structure = Structure(Lattice.cubic(20.0), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structure.properties["material_id"] = "mp-lonely"
    with pytest.raises(StructureError, match=r"mp-lonely.*isolated atom"):
        build_graph(structure)


def test_non_finite_coordinates_are_an_error():
    structure = Structure(Lattice.cubic(3.0), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    structure.replace(1, "Li", [np.nan, 0.5, 0.5])
    with pytest.raises(StructureError, match=r"Li2.*non-finite coordinates.*\[1\]"):
        build_graph(structure)


def test_zero_volume_lattice_is_an_error():
    flat = Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]])
    structure = Structure(flat, ["Cu"], [[0, 0, 0]], validate_proximity=False)
    with pytest.raises(StructureError, match="zero volume"):
        build_graph(structure)


def test_non_periodic_atoms_are_an_error():
    from ase import Atoms

    with pytest.raises(StructureError, match="periodic"):
        build_graph(Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]]))


def test_a_structure_open_along_an_axis_is_taken_when_no_bond_crosses_it():
    """A slab (pbc True, True, False) or a boxed molecule was refused; the model repeats the
    cell along every axis as the reference does, so with enough vacuum the graph is the
    periodic one, and a bond across the open axis is refused naming the atoms and the axis."""
    from ase.build import fcc111, molecule

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=8.0)  # pbc (True, True, False)
    periodic = slab.copy()
    periodic.pbc = True
    open_graph, closed_graph = build_graph(slab), build_graph(periodic)
    np.testing.assert_array_equal(open_graph.bond_atoms, closed_graph.bond_atoms)
    np.testing.assert_array_equal(open_graph.bond_images, closed_graph.bond_images)
    thin = fcc111("Cu", size=(2, 2, 3), vacuum=2.0)  # a 4 Å gap: bonds across it
    with pytest.raises(StructureError, match=r"^structure \(Cu12\): atoms \d+ and \d+ are within "
                       r"the cutoff across axis 2, along which it is not periodic"):  # fmt: skip
        build_graph(thin)
    thin.pbc = True
    build_graph(thin)  # the periodic crystal it then is
    water = molecule("H2O")
    with pytest.raises(StructureError, match=r"no cell along its open axes: put it in a box "
                       r".*center\(vacuum=10\)\)$"):  # fmt: skip
        build_graph(water)
    bare = fcc111("Cu", size=(2, 2, 3))  # no vacuum: a zero c vector
    with pytest.raises(StructureError, match=r"center\(vacuum=10, axis=2\)"):  # not the plane
        build_graph(bare)
    water.center(vacuum=8.0)  # a box, pbc still off
    assert build_graph(water).n_atoms == 3


def test_a_disordered_structure_is_named_by_its_formula():
    """It was named by its type: 'structure 0 (Structure)'."""
    from fastchgnet.data.graph import structure_name

    alloy = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}, "O"], [[0, 0, 0], [0.5] * 3])
    assert structure_name(alloy, 0) == "structure 0 (Fe0.5Ni0.5O1)"
