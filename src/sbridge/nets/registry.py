"""Networks by name: plain ``torch.nn.Module``s with ``forward(x, t, cond=None)`` that know nothing about bridges.

* ``mlp``: :class:`~sbridge.nets.mlp.TimeMLP` for vectors (and any event shape, flattened);
* ``unet``: :class:`~sbridge.nets.unet.UNet` for images ``(C, H, W)``;
both condition on a :class:`~sbridge.nets.embeddings.ConditionEmbedding`.

:func:`make_network` builds a network from a JSON-compatible config (``{"name": "mlp", "hidden": 128}``), so a run's
``config.json`` rebuilds it; a user's own module may be passed to a solver instead (``net=``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_choice
from sbridge.nets.mlp import TimeMLP


def _build_mlp(shape: tuple[int, ...], cond: dict[str, Any] | None, **options: Any) -> nn.Module:
    return TimeMLP(shape=shape, cond=cond, **options)


def _build_unet(shape: tuple[int, ...], cond: dict[str, Any] | None, **options: Any) -> nn.Module:
    from sbridge.nets.unet import UNet  # the UNet imports the embeddings; imported when first built

    if len(shape) != 3:
        raise ConfigError(f"the UNet needs image data of shape (C, H, W), got event shape {shape}; use net='mlp'.")
    return UNet(shape, cond=cond, **options)


NETWORKS = {"mlp": _build_mlp, "unet": _build_unet}


def default_network(shape: tuple[int, ...]) -> str:
    """``unet`` for images ``(C, H, W)`` with ``H, W >= 8``, else ``mlp``."""
    return "unet" if len(shape) == 3 and min(shape[1:]) >= 8 else "mlp"


def network_config(spec: str | dict[str, Any] | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """Normalise a network spec (a name, a dict with ``name``, or ``None`` for the default) to a config dict."""
    return named_config(spec, default_network(shape), tuple(NETWORKS), "network",
                        "net must be 'mlp', 'unet', a dict with a 'name' key, or an nn.Module")


def named_config(spec: str | dict[str, Any] | None, default: str, names: tuple[str, ...], what: str,
                 shape_error: str) -> dict[str, Any]:
    """A config spec as a dict with a ``name`` among ``names``: ``None`` gives ``default``, a string its name, a
    dict is copied; anything else raises ``shape_error`` (a sentence without its full stop)."""
    if spec is None:
        spec = default
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{shape_error}; got {spec!r}.")
    check_choice(spec["name"], names, what)
    return dict(spec)


def make_network(config: dict[str, Any], shape: tuple[int, ...], cond: dict[str, Any] | None = None) -> nn.Module:
    """Build the network described by ``config`` (see :func:`network_config`) for events of ``shape``."""
    options = dict(config)
    name = options.pop("name")
    try:
        return NETWORKS[name](tuple(shape), cond, **options)
    except TypeError as exc:
        raise ConfigError(f"invalid options {sorted(options)} for network {name!r} ({exc}).") from None


def mlp_shorthand(net: Any, hidden: int | None, depth: int | None, time_dim: int | None) -> Any:
    """Fold the ``hidden``/``depth``/``time_dim`` shorthand into an MLP network config."""
    sizes = {k: v for k, v in (("hidden", hidden), ("depth", depth), ("time_dim", time_dim)) if v is not None}
    if not sizes:
        return net
    if net is None or net == "mlp":
        return {"name": "mlp", **sizes}
    if isinstance(net, dict) and net.get("name") == "mlp":
        return {**net, **sizes}
    raise ConfigError(f"hidden/depth/time_dim size the MLP; with net={net!r} set the network's own options instead.")
