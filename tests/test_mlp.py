"""The time-conditioned MLP (sbridge.nets.mlp.TimeMLP): time in the input only, or in every hidden layer; Fourier
features of the input."""

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


def _fourier_columns(net: TimeMLP) -> slice:
    """The first layer's input columns that read ``sin`` / ``cos`` of the coordinates."""
    return slice(net.dim, net.dim * (1 + 2 * net.fourier_bands))


def test_fourier_features_reduce_to_the_plain_network_when_their_weights_are_zero():
    """The first layer reads ``[x, sin(w x), cos(w x), e(t)]``: with the Fourier columns' weights zero and the other
    weights those of a plain MLP, the two are the same function; with them non-zero, not."""
    torch.manual_seed(0)
    fourier = TimeMLP(2, hidden=16, depth=2, time_dim=8, fourier_bands=3)
    plain = TimeMLP(2, hidden=16, depth=2, time_dim=8)
    state = fourier.state_dict()
    first = state["net.0.weight"]
    keep = torch.ones(first.shape[1], dtype=torch.bool)
    keep[_fourier_columns(fourier)] = False
    plain.load_state_dict({**state, "net.0.weight": first[:, keep]}, strict=True)
    for layer in (fourier.net[-1], plain.net[-1]):
        torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(1))
    x, t = 3 * torch.randn(9, 2), torch.rand(9)
    with torch.no_grad():
        fourier.net[0].weight[:, _fourier_columns(fourier)] = 0
        assert torch.allclose(fourier(x, t), plain(x, t), atol=1e-6)
        torch.nn.init.normal_(fourier.net[0].weight, generator=torch.Generator().manual_seed(2))
        plain.net[0].weight.copy_(fourier.net[0].weight[:, keep])
        assert (fourier(x, t) - plain(x, t)).abs().max() > 1e-3


def test_fourier_features_have_the_stated_periods():
    """Frequencies ``2 pi 2^k / period``: without the raw coordinates (their weights zero) the network is periodic
    with ``period`` in every coordinate, and not with half of it (the longest wavelength is the period itself)."""
    torch.manual_seed(0)
    net = TimeMLP(2, hidden=16, depth=2, time_dim=8, fourier_bands=4, fourier_period=3.0)
    torch.nn.init.normal_(net.net[-1].weight, generator=torch.Generator().manual_seed(1))
    x, t = torch.randn(9, 2), torch.rand(9)
    with torch.no_grad():
        net.net[0].weight[:, :2] = 0
        shift = torch.tensor([3.0, -6.0])
        assert torch.allclose(net(x + shift, t), net(x, t), atol=1e-4)
        assert (net(x + 0.5 * shift, t) - net(x, t)).abs().max() > 1e-3


def test_fourier_features_belong_to_the_config_and_leave_the_saved_keys_alone():
    """A network rebuilt from its config computes the same function from the saved state dict; the frequencies are
    derived from the config, not stored, so a checkpoint's keys are those of the plain network of that width."""
    config = {"name": "mlp", "hidden": 16, "depth": 2, "time_dim": 8, "fourier_bands": 5, "fourier_period": 4.0}
    first, second = make_network(config, (2,)), make_network(config, (2,))
    torch.nn.init.normal_(first.net[-1].weight, generator=torch.Generator().manual_seed(1))
    second.load_state_dict(first.state_dict(), strict=True)
    x, t = torch.randn(4, 2), torch.rand(4)
    assert torch.equal(first(x, t), second(x, t))
    assert set(first.state_dict()) == set(TimeMLP(2, hidden=16, depth=2, time_dim=8).state_dict())


@pytest.mark.parametrize("options", [{"fourier_bands": -1}, {"fourier_bands": 2.5}, {"fourier_period": 0.0}])
def test_bad_fourier_options_are_one_sentence(options):
    with pytest.raises(ConfigError, match="fourier"):
        TimeMLP(2, **options)
