"""chgnet's model arguments this architecture lacks are refused in one line naming chgnet's
argument and where it came from; the ones it has take chgnet's forms."""

from __future__ import annotations

import warnings

import pytest

from fastchgnet.compat import CHGNet


@pytest.mark.parametrize("key", ["gMLP_norm", "readout_norm"])
def test_batch_norm_is_refused_naming_chgnets_argument(key):
    with pytest.raises(ValueError, match=rf"^CHGNet\(\.\.\.\): {key}='batch' is not supported"):
        CHGNet(**{key: "batch"})
    with pytest.raises(ValueError, match=rf"^CHGNet.from_dict: {key}='batch' is not supported"):
        CHGNet.from_dict({"model_args": {key: "batch"}, "state_dict": {}})


@pytest.mark.parametrize("key", ["conv_dropout", "mlp_dropout"])
def test_dropout_of_a_new_model_is_refused_not_ignored(key):
    with pytest.raises(ValueError, match=rf"^CHGNet\(\.\.\.\): {key}=0.1 is not supported"):
        CHGNet(**{key: 0.1})


def test_an_int_mlp_hidden_dims_is_one_hidden_layer_as_the_reference(chgnet_ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = chgnet_ref.CHGNet(mlp_hidden_dims=64)
    ours = CHGNet(mlp_hidden_dims=64)
    assert ours.model_args == reference.model_args
    assert ours.config.mlp_hidden_dims == (64,)
    assert sum(p.numel() for p in ours.energy_readout.mlp.parameters()) == sum(
        p.numel() for p in reference.mlp.parameters()
    )
