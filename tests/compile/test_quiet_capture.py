"""A captured predict shows no warning of torch's own that a user cannot act on."""

from __future__ import annotations

import warnings


def test_torchs_treespec_deprecation_is_not_shown():
    from torch.utils._pytree import LeafSpec

    import fastchgnet.compile  # noqa: F401 - its filter is what is tested

    with warnings.catch_warnings(record=True) as caught:
        LeafSpec()  # what torch's compile path builds when it copies a pytree spec
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
