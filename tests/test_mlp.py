"""The time-conditioned MLP (sbridge.nets.mlp.TimeMLP): time in the input only, or in every hidden layer."""

import pytest
import torch

from sbridge.core.errors import ConfigError
from sbridge.nets.mlp import TimeMLP
from sbridge.nets.registry import make_network


def test_time_in_every_layer_reduces_to_the_input_only_network_when_its_maps_are_zero():
    """``time_layers="all"`` adds ``U_l e(t)`` to each deeper layer's pre-activation: with ``U_l = 0`` and the same
    other weights the two networks are the same function; with ``U_l != 0`` the output depends on t through them."""
    torch.manual_seed(0)
    every = TimeMLP(3, hidden=16, depth=3, time_dim=8, time_layers="all")
    plain = TimeMLP(3, hidden=16, depth=3, time_dim=8)
    plain.load_state_dict({k: v for k, v in every.state_dict().items() if not k.startswith("time_maps")})
    for layer in (every.net[-1], plain.net[-1]):  # a non-zero output layer, so the outputs carry the hidden state
        torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(1))
    x, t = torch.randn(7, 3), torch.rand(7)
    with torch.no_grad():
        for m in every.time_maps:
            m.weight.zero_()
        assert torch.allclose(every(x, t), plain(x, t), atol=1e-6)
        for m in every.time_maps:
            torch.nn.init.normal_(m.weight, generator=torch.Generator().manual_seed(2))
        assert (every(x, t) - plain(x, t)).abs().max() > 1e-3


def test_time_maps_belong_to_the_config_and_survive_a_rebuild():
    """A network built from its config dict (what a saved run stores) has the time maps, and a state dict saved from
    one loads strictly into another built from the same config, giving the same outputs."""
    config = {"name": "mlp", "hidden": 16, "depth": 2, "time_dim": 8, "time_layers": "all"}
    first, second = make_network(config, (2,)), make_network(config, (2,))
    assert len(first.time_maps) == 1
    second.load_state_dict(first.state_dict(), strict=True)
    x, t = torch.randn(4, 2), torch.rand(4)
    assert torch.equal(first(x, t), second(x, t))


def test_bad_time_layers_is_one_sentence():
    with pytest.raises(ConfigError, match="time_layers"):
        TimeMLP(2, time_layers="every")
