"""chgnet's SciPy optimizers, given by name to compat ``StructOptimizer``, are refused as not
supported here, naming the ones it takes ("Optimizer 'SciPyFminCG' not found" read like a
typo); a name chgnet does not have either is still "not found"."""

from __future__ import annotations

import pytest

from fastchgnet.compat import StructOptimizer
from fastchgnet.compat.dynamics import OPTIMIZERS


@pytest.mark.parametrize("name", ["SciPyFminCG", "SciPyFminBFGS"])
def test_chgnet_scipy_optimizers_are_said_unsupported_with_the_supported_ones(compat_model, name):
    says = rf"optimizer_class='{name}' \(chgnet's\) is not supported in fastchgnet\.compat"
    with pytest.raises(ValueError, match=says) as caught:
        StructOptimizer(compat_model, optimizer_class=name)
    message = str(caught.value)
    assert "not found" not in message
    assert all(supported in message for supported in OPTIMIZERS)
    assert "\n" not in message


def test_an_unknown_optimizer_name_is_not_found(compat_model):
    with pytest.raises(ValueError, match="Optimizer 'Newton' not found"):
        StructOptimizer(compat_model, optimizer_class="Newton")
