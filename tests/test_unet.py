"""Tests for the image UNet: shapes, zero start, size, dependence on time and condition, trainability, float64."""

from __future__ import annotations

import pytest
import torch

from sbridge.core.errors import DataError
from sbridge.nets.registry import make_network
from sbridge.nets.unet import UNet

pytestmark = pytest.mark.usefixtures("single_thread")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("shape", "options"), [
    ((1, 28, 28), {}),                                 # 28 -> 14 -> 7
    ((1, 8, 8), {}),                                   # 8 -> 4 -> 2
    ((3, 4, 4), {"channel_mults": (1, 2)}),            # 4 -> 2, two levels
    ((1, 7, 7), {"attention": True}),                  # odd: 7 -> 4 -> 2, then 2 -> 4 -> 7
    ((2, 5, 9), {"channels": 16, "groups": 3}),       # odd, non-square; groups reduced to a divisor of 16
])
def test_output_shape_and_zero_start(shape: tuple[int, int, int], options: dict) -> None:
    torch.manual_seed(0)
    net = UNet(shape, **options)
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))
    assert torch.equal(net(x, 0.5), torch.zeros_like(x))  # float time too


def test_default_parameter_count() -> None:
    assert 1e6 <= n_params(UNet((1, 28, 28))) <= 2.5e6


def test_make_network_builds_unet() -> None:
    config = {"name": "unet", "channels": 16, "channel_mults": [1, 2]}
    net = make_network(config, (1, 8, 8), {"kind": "label", "classes": 3})
    assert isinstance(net, UNet)
    assert net(torch.randn(2, 1, 8, 8), 0.1, torch.tensor([0, 2])).shape == (2, 1, 8, 8)


def _one_step(net: UNet, shape: tuple[int, int, int], cond: torch.Tensor | None = None) -> None:
    """One Adam step on a random regression target: only the zero-initialised last layer moves."""
    x, target = torch.randn(4, *shape), torch.randn(4, *shape)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = (net(x, torch.rand(4), cond) - target).pow(2).mean()
    loss.backward()
    opt.step()


def test_time_matters_after_one_step() -> None:
    torch.manual_seed(1)
    shape = (1, 8, 8)
    net = UNet(shape, channels=16, channel_mults=(1, 2))
    _one_step(net, shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        a, b = net(x, 0.1), net(x, torch.full((2,), 0.9))
    assert a.abs().max() > 0
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(net(x, 0.1), net(x, torch.full((2,), 0.1)))


def test_label_condition_matters_and_minus_one_is_none() -> None:
    torch.manual_seed(2)
    shape = (1, 8, 8)
    net = UNet(shape, channels=16, channel_mults=(1, 2), cond={"kind": "label", "classes": 10})
    _one_step(net, shape, torch.randint(0, 10, (4,)))
    x = torch.randn(3, *shape)
    with torch.no_grad():
        out = {lab: net(x, 0.4, torch.full((3,), lab)) for lab in (0, 3, -1)}
        none = net(x, 0.4, None)
    assert (out[0] - out[3]).abs().max() > 1e-4
    assert (out[0] - none).abs().max() > 1e-4
    assert torch.equal(out[-1], none)
    # Per-row conditioning: a mixed batch matches the rows computed one label at a time.
    mixed = net(x, 0.4, torch.tensor([0, 3, -1]))
    torch.testing.assert_close(mixed, torch.stack([out[0][0], out[3][1], none[2]]))


def test_vector_condition_nan_is_none() -> None:
    torch.manual_seed(3)
    shape = (1, 4, 4)
    net = UNet(shape, channels=8, channel_mults=(1, 2), cond={"kind": "vector", "dim": 2})
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # leave the zero start so that the condition shows
    x = torch.randn(2, *shape)
    with torch.no_grad():
        a = net(x, 0.2, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        b = net(x, 0.2, torch.tensor([[2.0, -1.0], [2.0, -1.0]]))
        nan = net(x, 0.2, torch.full((2, 2), float("nan")))
        none = net(x, 0.2)
    assert (a - b).abs().max() > 1e-5
    assert torch.equal(nan, none)


def test_fits_a_fixed_target() -> None:
    torch.manual_seed(4)
    shape = (1, 8, 8)
    net = UNet(shape)
    x, target = torch.randn(8, *shape), torch.randn(8, *shape)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def mse() -> torch.Tensor:
        return (net(x, 0.5) - target).pow(2).mean()

    with torch.no_grad():
        initial = mse().item()
    for _ in range(150):
        opt.zero_grad()
        loss = mse()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = mse().item()
    assert final < initial / 10, (initial, final)


def test_float64() -> None:
    torch.manual_seed(5)
    shape = (1, 8, 8)
    net = UNet(shape, channels=16, channel_mults=(1, 2), attention=True,
               cond={"kind": "label", "classes": 4}).double()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(2, *shape, dtype=torch.float64)
    out = net(x, torch.tensor([0.1, 0.7], dtype=torch.float64), torch.tensor([1, -1]))
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().max() > 0
    out.sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float64 for p in net.parameters())


def test_rejects_wrong_channels() -> None:
    with pytest.raises(DataError):
        UNet((1, 8, 8), channel_mults=(1, 2))(torch.randn(2, 3, 8, 8), 0.5)
