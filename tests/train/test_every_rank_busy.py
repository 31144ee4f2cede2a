"""Every rank runs a batch at every training and evaluation step: where fewer structures than
ranks remain, the ranks without one get a padding-only batch (all labels masked), so they still
join every collective; no structure is duplicated, and each is counted once in the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastchgnet.train.loading import EpochBatches, make_loader, make_sampler, make_splits
from fastchgnet.train.loop import evaluate
from fastchgnet.train.metrics import MetricSums
from tests.compile.conftest import small_model
from tests.train.helpers import small_cache, tiny_config

WORLD = 4


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("busy")
    cache = small_cache(folder / "cache", n=10)
    return make_splits(cache, tiny_config(cache, folder / "run").data)


def rank_batches(splits, indices: np.ndarray, packed: bool) -> list[list[tuple]]:
    """Each rank's (GraphBatch, LabelBatch) list of one epoch over ``indices``."""
    data = tiny_config(splits.dataset.cache_dir, splits.dataset.cache_dir).data
    out = []
    for rank in range(WORLD):
        sampler = make_sampler(splits, indices, data, (rank, WORLD), seed=0, packed=packed)
        capacity = sampler.capacity if packed else None
        loader = make_loader(splits, EpochBatches(sampler, indices, 0), 0, capacity)
        out.append(list(loader))
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_ranks_without_structures_get_padding_only_batches(splits, packed) -> None:
    indices = splits.train[:3]  # 3 structures, 4 ranks
    batches = rank_batches(splits, indices, packed)
    assert len({len(b) for b in batches}) == 1  # every rank runs every step
    real = [int(labels.energy_mask.sum()) for per_rank in batches for _, labels in per_rank]
    assert sum(real) == 3  # no structure dropped or duplicated
    assert 0 in real  # at least one rank trained on padding only
    for per_rank in batches:
        for graphs, labels in per_rank:
            assert graphs.n_structures >= 1  # the dummy at least
            if int(labels.energy_mask.sum()) == 0:
                assert not labels.forces_mask.any()
                assert not labels.magmoms_mask.any()


def test_each_structure_counts_once_in_the_metrics_over_all_ranks(splits) -> None:
    indices = splits.val if len(splits.val) < WORLD else splits.val[:1]
    model = small_model("direct")
    totals = MetricSums()
    for per_rank in rank_batches(splits, indices, packed=False):
        sums = evaluate(model, per_rank, "cpu")  # no process group: this rank's sums
        totals.sums = totals.sums + sums.sums
    energy_count = totals.sums[0, 0].item()
    n_atoms = sum(int(splits.dataset.sizes[i, 0]) for i in indices)
    assert energy_count == len(indices)
    assert totals.sums[1, 0].item() == 3 * n_atoms  # force components, padding excluded
    assert torch.isfinite(totals.sums).all()


def test_evaluation_takes_no_weight_gradient_and_restores_the_model(splits) -> None:
    """Validation of a conservative model runs in eval mode with the weights frozen (no weight
    path recorded while the forces are taken), gives the metrics of a plain eval call, and
    leaves the training mode and every requires_grad flag as they were."""
    model = small_model("conservative").train()
    model.atom_convs[0].mlp_out.weight.requires_grad_(False)  # a frozen weight stays frozen
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    batches = rank_batches(splits, splits.train[:4], packed=False)[0]
    seen: list[tuple[bool, bool]] = []
    hook = model.atom_convs[0].register_forward_hook(
        lambda module, *_: seen.append(
            (module.training, any(p.requires_grad for p in model.parameters()))
        )
    )
    got = evaluate(model, batches, "cpu")
    hook.remove()
    assert len(seen) == len(batches)
    assert set(seen) == {(False, False)}  # eval mode, no weight path, at every batch
    assert model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    model.eval()
    plain = MetricSums()
    for graphs, labels in batches:
        plain.add(model(graphs), labels)
    torch.testing.assert_close(got.sums, plain.sums, rtol=1e-6, atol=1e-6)
