"""CHGNet interaction layers: GatedMLP, AtomConv, BondConv, AngleUpdate.

Each conv's GatedMLP reads a concatenation of atom, bond and angle features per edge or per
angle. A linear map of a concatenation is the sum of linear maps of its parts, so the atom parts
are projected once per atom and the bond parts once per bond, then gathered; only an angle's own
part is projected per angle (the paper's "computation graph reconstruction"). The weights keep
the concatenated layout, so ``GatedMLP.forward`` on the explicit concatenation is the same
function (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from fastchgnet.model.double_backward import LayerNorm, SiLU, silu
from fastchgnet.model.tracing import tracing

if TYPE_CHECKING:
    from fastchgnet.data.batch import GraphBatch


class Topology(NamedTuple):
    """Index tensors of a batch, derived once per forward (see fastchgnet.data.batch).

    edge_centre (n_edges,) | edge_neighbour (n_edges,) | edge_bond (n_edges,) |
    short_edge_centre (2 * n_short_bonds,): centre atom of each directed bond-graph edge
    (short bond b from its first atom, then from its second at n_short_bonds + b) |
    angle_edge1 (n_angles,): an angle's first directed edge among those; the angle's centre is
    that edge's centre | angle_bond1 (n_angles,) | angle_bond2 (n_angles,) |
    n_short_bonds: the bond graph's nodes are bonds[:n_short_bonds]; angle bonds index them
    """

    edge_centre: Tensor
    edge_neighbour: Tensor
    edge_bond: Tensor
    short_edge_centre: Tensor
    angle_edge1: Tensor
    angle_bond1: Tensor
    angle_bond2: Tensor
    n_short_bonds: int

    @classmethod
    def of(cls, batch: GraphBatch) -> Topology:
        """The index tensors of ``batch`` (see fastchgnet.data.batch)."""
        edge_centre = pair_ends(batch.bond_atoms)
        i, j = edge_centre.view(2, -1)
        bond_ids = torch.arange(batch.bond_atoms.shape[0], device=i.device)
        edge_bond = torch.cat([bond_ids, bond_ids])
        e1, e2 = batch.angle_edges[:, 0], batch.angle_edges[:, 1]
        n_bonds, n_short = batch.bond_atoms.shape[0], batch.n_short_bonds
        return cls(
            edge_centre=edge_centre,
            edge_neighbour=torch.cat([j, i]),
            edge_bond=edge_bond,
            short_edge_centre=torch.cat([i[:n_short], j[:n_short]]),
            # edges of short bonds are b and n_bonds + b, b < n_short: renumbered b, n_short + b
            angle_edge1=torch.where(e1 < n_bonds, e1, e1 - (n_bonds - n_short)),
            angle_bond1=edge_bond[e1],
            angle_bond2=edge_bond[e2],
            n_short_bonds=batch.n_short_bonds,
        )


def parallel_cpu(values: Tensor) -> bool:
    """True when ``values`` live on a CPU and torch runs more than one thread there.

    Gathers and scatter sums then take the "expanded index" form (``torch.gather`` and
    ``scatter_add`` with the row index broadcast over the feature columns): aten sums it in
    parallel over a sorted index, without atomics, and inductor hands every such scatter to
    that aten kernel instead of generating per-element atomic adds (``cpp``'s
    ``fallback_scatter_reduce_sum``), so captured graphs can run all their kernels on every
    thread. On one thread (and on GPUs) ``index_select`` / ``index_add`` are faster (about 7 %
    per conservative training step on one CPU thread) and are kept. Both forms sum each row's
    terms in index order: the results are the same to the bit. Under dynamo (``torch.compile``
    of a model call itself; our captured graphs are traced by make_fx, which reads the thread
    count) the expanded form is taken on any CPU: the thread count would break the graph.
    """
    if values.device.type != "cpu":
        return False
    return torch.compiler.is_compiling() or torch.get_num_threads() > 1


def expanded(index: Tensor, like: Tensor) -> Tensor:
    """Row index (n,) broadcast (a view, no copy) to (n, *like.shape[1:])."""
    # unsqueeze, not view(-1, 1, ...): with n symbolic, the view's size inference took 10 % of
    # a TorchScript symbolic trace (LiMnO2 MD graph: 1.64 against 1.82 s)
    for _ in range(like.dim() - 1):
        index = index.unsqueeze(-1)
    return index.expand(-1, *like.shape[1:])


def gather(values: Tensor, index: Tensor) -> Tensor:
    """Rows ``values[index]`` (n, ...) -> (len(index), ...).

    ``index_select`` rather than advanced indexing: its backward is a scatter sum, several
    times faster on CPU than the ``index_put`` accumulate that ``values[index]`` needs. On
    several CPU threads (``parallel_cpu``) the backward is the expanded-index scatter sum:
    large gathers copy rows forward (``_RowGather``), small ones and any being traced
    (``tracing``) take the expanded form (``torch.gather``) both ways. Large eager gathers on
    one CPU thread go through ``_RowGather`` too, whose backward keeps only the index.
    """
    if _eager_cpu_rows(values, index.numel() * math.prod(values.shape[1:])):
        return _RowGather.apply(values, index)
    if parallel_cpu(values):
        if tracing():
            return torch.gather(values, 0, expanded(index, values))
        # eager torch.gather from a strided view (a column block of a wider product) runs
        # 10-18x slower than from contiguous rows: copy them first (a few us)
        return torch.gather(values.contiguous(), 0, expanded(index, values))
    return values.index_select(0, index)


def _eager_cpu_rows(values: Tensor, elements: int) -> bool:
    """Whether a gather or scatter sum of ``elements`` takes ``_RowGather`` / ``_RowScatter``:
    eager (not traced), on a CPU, at least ``ROW_COPY_MIN`` elements."""
    # tracing first: a symbolic trace would otherwise guard on the size
    return values.device.type == "cpu" and not tracing() and elements >= ROW_COPY_MIN


#: Fewest gathered (or summed) elements for which eager CPU gathers and scatter sums take
#: ``_RowGather`` / ``_RowScatter``: below it the autograd Function's Python overhead (about
#: 10 us a call) outweighs the faster copy (1088 rows of 128 floats: 15 us expanded, 12 us by
#: rows) and the memory it saves.
ROW_COPY_MIN = 1 << 18


class _RowGather(torch.autograd.Function):
    """``values.index_select(0, index)`` whose backward is ``_RowScatter`` (``scatter_rows``).

    ``torch.gather`` with an expanded index reads the index once per element: on 2 CPU threads
    it took 206 us for 5952 rows of 128 floats where ``index_select`` took 79 us
    (``index_select`` copies whole rows). Its backward, aten's ``index_add``, runs on one
    thread; the expanded ``scatter_add`` runs on all, atomic-free (``parallel_cpu``). This
    pair takes the fast half of each, with the same values to the bit (a gather is a copy; the
    scatter sums add in the same order). Twice differentiable: each backward is the other.

    On one thread the pair is ``index_select`` / ``index_add`` as autograd would run them, but
    each saves only the index: autograd's ``index_add`` keeps its whole source (the summed
    messages, or the incoming gradient of a gather) for its own backward. Eager conservative
    training at batch 16 on one thread peaked at 424.1 MiB that way, 404.5 MiB this way.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = values.shape[0]
        return values.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return _RowScatter.apply(grad, index, ctx.rows), None


class _RowScatter(torch.autograd.Function):
    """``scatter_rows`` of ``values`` (n, ...) into ``size`` rows, whose backward is
    ``_RowGather`` (an ``index_select``, not an expanded ``torch.gather``)."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, index: Tensor, size: int) -> Tensor:
        ctx.save_for_backward(index)
        return scatter_rows(values, index, size)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (index,) = ctx.saved_tensors
        return _RowGather.apply(grad, index), None, None


#: dtypes whose sums accumulate in float32 (mixed precision: ``FastCHGNet.set_precision``)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum rows of ``values`` (n, ...) into ``size`` rows by ``index`` (n,) -> (size, ...);
    bfloat16 or float16 values are summed in float32 (and returned so)."""
    dtype = torch.float32 if values.dtype in LOW_PRECISION else values.dtype
    values = values.to(dtype)
    if _eager_cpu_rows(values, values.numel()):
        return _RowScatter.apply(values, index, size)
    return scatter_rows(values, index, size)


def scatter_rows(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum rows of ``values`` (n, ...) into ``size`` rows by ``index`` (n,) -> (size, ...):
    the expanded-index form on several CPU threads (``parallel_cpu``), else ``index_add``."""
    if parallel_cpu(values):
        return expanded_scatter_sum(values, index, size)
    return values.new_zeros(size, *values.shape[1:]).index_add(0, index, values)


def expanded_scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """``scatter_sum`` in the expanded-index form (``parallel_cpu``): (n, ...) -> (size, ...)."""
    out = values.new_zeros(size, *values.shape[1:])
    return out.scatter_add(0, expanded(index, values), values)


def pair_ends(pairs: Tensor) -> Tensor:
    """(n, 2) index pairs (a bond's atoms i, j; an angle's two edges) -> (2 * n,) contiguous:
    every pair's first, then every pair's second.

    Gather by these, or by a row of ``.view(2, -1)``, never by a column ``pairs[:, 0]``: that
    is strided (stride 2), and aten's fast CPU scatter sum of 16 or more columns (the
    expanded-index path the backward of a gather takes on several threads) needs an index of
    stride 1 and a contiguous source. With a column it takes the generic path: a (4000, 64)
    sum into 400 rows took 447 us against 88 us on 2 threads."""
    return pairs.T.reshape(-1)


def norm_or_identity(kind: str | None, dim: int) -> nn.Module:
    return LayerNorm(dim) if kind == "layer" else nn.Identity()


class GatedMLP(nn.Module):
    """silu(norm_c(core(x))) * sigmoid(norm_g(gate(x))), both branches' first layer in one GEMM.

    ``core`` and ``gate`` are MLPs ``in -> hidden -> out`` (silu between) when ``hidden_dim``
    > 0, else single linear layers ``in -> out``. ``first`` holds both branches' first layers
    stacked: its output is (n, 2 * width), core half first.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, norm: str | None):
        super().__init__()
        self.width = hidden_dim if hidden_dim > 0 else out_dim
        self.first = nn.Linear(in_dim, 2 * self.width)
        self.core_out = nn.Linear(hidden_dim, out_dim) if hidden_dim > 0 else None
        self.gate_out = nn.Linear(hidden_dim, out_dim) if hidden_dim > 0 else None
        self.core_norm = norm_or_identity(norm, out_dim)
        self.gate_norm = norm_or_identity(norm, out_dim)

    def finish(self, pre: Tensor) -> Tensor:
        """(n, 2 * width) output of ``first`` -> (n, out_dim)."""
        if self.core_out is not None and self.gate_out is not None:
            core, gate = silu(pre).chunk(2, dim=1)
            core, gate = self.core_out(core), self.gate_out(gate)
        else:
            core, gate = pre.chunk(2, dim=1)
        return silu(self.core_norm(core)) * torch.sigmoid(self.gate_norm(gate))

    def forward(self, x: Tensor) -> Tensor:
        """(n, in_dim) -> (n, out_dim), on an explicit concatenation of inputs."""
        return self.finish(self.first(x))

    def input_weights(self, sizes: list[int]) -> tuple[Tensor, ...]:
        """Column blocks of ``first.weight`` for the concatenated inputs, each (2*width, size)."""
        return self.first.weight.split(sizes, dim=1)


class AtomConv(nn.Module):
    """Atom update from directed edges: a_i += W_out sum_j GatedMLP(a_i, b_ij, a_j) * w_ij."""

    def __init__(self, atom_dim: int, bond_dim: int, hidden_dim: int, norm: str | None, bias: bool):
        super().__init__()
        self.atom_dim, self.bond_dim = atom_dim, bond_dim
        self.gated = GatedMLP(2 * atom_dim + bond_dim, atom_dim, hidden_dim, norm)
        self.mlp_out = nn.Linear(atom_dim, atom_dim, bias=bias)

    def forward(self, atoms: Tensor, bonds: Tensor, bond_weights: Tensor, topo: Topology) -> Tensor:
        """atoms (n_atoms, A), bonds (n_bonds, B), bond_weights (n_bonds, A) -> (n_atoms, A)."""
        w_centre, w_bond, w_neighbour = self.gated.input_weights(
            [self.atom_dim, self.bond_dim, self.atom_dim]
        )
        # two GEMMs, not one on the stacked weights then split: see ``_angle_preactivation``
        from_centre, from_neighbour = atoms @ w_centre.T, atoms @ w_neighbour.T
        n_bonds = bonds.shape[0]
        per_bond = torch.addmm(self.gated.first.bias, bonds, w_bond.T)  # bias folded in
        pre = gather(from_centre, topo.edge_centre) + gather(from_neighbour, topo.edge_neighbour)
        # edges b and n_bonds + b share bond b: broadcast over the two directions, no copy
        # (sizes spelled out: with no bond at all, a -1 beside the 0 would be ambiguous)
        width = pre.shape[1]
        pre = (pre.view(2, n_bonds, width) + per_bond).view(2 * n_bonds, width)
        messages = self.gated.finish(pre).view(2, n_bonds, self.atom_dim) * bond_weights
        summed = scatter_sum(
            messages.view(2 * n_bonds, self.atom_dim), topo.edge_centre, atoms.shape[0]
        )
        return atoms + self.mlp_out(summed)


class BondConv(nn.Module):
    """Bond update from angles: b_1 += W_out sum GatedMLP(b_1, b_2, t, a_c) * (w_1 * w_2).

    The angle weights w_1 * w_2 (the bond-graph weights of an angle's two bonds) are the same
    in every block: the model forms them once per forward (``angle_weights``). Only the bond
    graph's nodes (the short bonds, stored first) receive angle messages; the
    others get W_out applied to an empty sum (zero, or the output bias).
    """

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        angle_dim: int,
        hidden_dim: int,
        norm: str | None,
        bias: bool,
    ):
        super().__init__()
        self.sizes = [bond_dim, bond_dim, angle_dim, atom_dim]
        self.gated = GatedMLP(sum(self.sizes), bond_dim, hidden_dim, norm)
        self.mlp_out = nn.Linear(bond_dim, bond_dim, bias=bias)

    def forward(
        self, atoms: Tensor, bonds: Tensor, pair_weights: Tensor, angles: Tensor, topo: Topology
    ) -> Tensor:
        """atoms (n_atoms, A), bonds (n_bonds, B), pair_weights (n_angles, B) from
        ``angle_weights``, angles (n_angles, T) -> bonds (n_bonds, B)."""
        # one split, not two slices: its backward is one concatenation, where each slice's
        # backward writes a zero (n_bonds, B) gradient of its own and the two are then added
        n_short = topo.n_short_bonds
        short, rest = bonds.split([n_short, bonds.shape[0] - n_short])
        pre = _angle_preactivation(self.gated, self.sizes, atoms, short, angles, topo)
        update = self.gated.finish(pre) * pair_weights
        short = short + self.mlp_out(scatter_sum(update, topo.angle_bond1, short.shape[0]))
        if self.mlp_out.bias is not None:
            rest = rest + self.mlp_out.bias
        return torch.cat([short, rest])


def angle_weights(bond_weights: Tensor, topo: Topology) -> Tensor:
    """Per angle, the product of its two bonds' bond-graph weights: (n_short_bonds, B) ->
    (n_angles, B). Formed once per forward and read by every ``BondConv``: two gathers and a
    product a block fewer, forward and backward."""
    return gather(bond_weights, topo.angle_bond1) * gather(bond_weights, topo.angle_bond2)


class AngleUpdate(nn.Module):
    """Angle update: t += GatedMLP(b_1, b_2, t, a_c)."""

    def __init__(
        self, atom_dim: int, bond_dim: int, angle_dim: int, hidden_dim: int, norm: str | None
    ):
        super().__init__()
        self.sizes = [bond_dim, bond_dim, angle_dim, atom_dim]
        self.gated = GatedMLP(sum(self.sizes), angle_dim, hidden_dim, norm)

    def forward(self, atoms: Tensor, bonds: Tensor, angles: Tensor, topo: Topology) -> Tensor:
        """atoms (n_atoms, A), bonds (n_bonds, B), angles (n_angles, T) -> (n_angles, T)."""
        short = bonds[: topo.n_short_bonds]
        pre = _angle_preactivation(self.gated, self.sizes, atoms, short, angles, topo)
        return angles + self.gated.finish(pre)


def _angle_preactivation(
    gated: GatedMLP,
    sizes: list[int],
    atoms: Tensor,
    bonds: Tensor,
    angles: Tensor,
    topo: Topology,
) -> Tensor:
    """First layer of a GatedMLP on [b_1, b_2, t, a_c] per angle, factored by input.

    ``bonds`` are the bond graph's nodes (n_short_bonds, B). An angle's centre atom is the
    centre of its first directed edge, so the b_1 and a_c parts are summed once per directed
    edge (2 * n_short_bonds rows) and gathered together: per angle, two gathers and two adds
    instead of three and three.
    """
    w_bond1, w_bond2, w_angle, w_atom = gated.input_weights(sizes)
    # Two GEMMs, not one on the stacked weights then split in two: the backward of a split
    # concatenates its halves' gradients, here two scatter sums (each half is gathered), and
    # inductor writes each sum straight into its half of the concatenation. aten's scatter sum
    # needs a contiguous destination for its fast expanded-index path (``parallel_cpu``) and
    # took its generic one, 4-8x slower: 140-184 us against about 30 us a call, 11 calls in
    # the 8-atom MD graph (whose call got 1.11x faster). Eager training measured the same.
    from_bond1, from_bond2 = bonds @ w_bond1.T, bonds @ w_bond2.T
    n_short, width = bonds.shape[0], from_bond1.shape[1]  # width: 2 * the GatedMLP's
    from_centre = gather(atoms @ w_atom.T, topo.short_edge_centre).view(2, n_short, width)
    per_edge1 = (from_centre + from_bond1).view(2 * n_short, width)
    return (
        gather(per_edge1, topo.angle_edge1)
        + gather(from_bond2, topo.angle_bond2)
        + torch.addmm(gated.first.bias, angles, w_angle.T)
    )


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> nn.Sequential:
    """Linear layers with SiLU between: in -> hidden... -> out."""
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
