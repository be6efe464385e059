"""Shape helpers shared by every module: data are ``(batch, *event_shape)``, time is a float or a ``(batch,)`` tensor.

One rule everywhere: per-sample quantities (time, a scalar variance, a loss weight) are broadcast against a batch by
:func:`expand_as_batch`, and reductions run over all non-batch dimensions (:func:`sum_event`), so the same code serves
vectors ``(n, d)``, images ``(n, C, H, W)`` and sequences ``(n, L, d)``.
"""

from __future__ import annotations

import math

import torch


def as_time(t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor on ``like``'s device and dtype: a 0-d tensor for a float, else the ``(batch,)`` tensor."""
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    if t.ndim > 1:
        t = t.reshape(t.shape[0])
    return t


def batch_time(t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(batch,)`` tensor for the batch ``like`` (a float is repeated for every row)."""
    t = as_time(t, like)
    return t.expand(like.shape[0]) if t.ndim == 0 else t


def expand_as_batch(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a 0-d or ``(batch,)`` tensor to ``(batch, 1, ..., 1)`` so it broadcasts against ``like``."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def sum_event(x: torch.Tensor) -> torch.Tensor:
    """Sum over every non-batch dimension: ``(batch, *event) -> (batch,)``."""
    return x.reshape(x.shape[0], -1).sum(1)


def event_numel(event_shape: tuple[int, ...]) -> int:
    """Number of scalars in one sample of shape ``event_shape``."""
    return math.prod(event_shape)


def flat(x: torch.Tensor) -> torch.Tensor:
    """``(batch, *event) -> (batch, n)`` with ``n`` the number of scalars per sample."""
    return x.reshape(x.shape[0], -1)


#: Differences from the maximum below this are clamped before ``exp`` in :func:`logsumexp` and :func:`softmax`:
#: ``exp(-80) ~ 2e-35`` is still a normal float32, and CPU ``exp`` is ~100x slower on arguments that underflow.
_EXP_FLOOR = -80.0


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log sum exp(x)`` along ``dim``, as :func:`torch.logsumexp` to a relative ``2e-35`` per term, but without
    ``exp`` of arguments that underflow (slow on CPU when the terms span hundreds of nats, as mixture log-weights at
    small variance do)."""
    top = x.amax(dim, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return torch.log(_exp_clamped(x - top).sum(dim)) + top.squeeze(dim)


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`torch.softmax` with the same underflow clamp as :func:`logsumexp`."""
    weights = _exp_clamped(x - x.amax(dim, keepdim=True).detach())
    return weights / weights.sum(dim, keepdim=True)


def _exp_clamped(diff: torch.Tensor) -> torch.Tensor:
    """``exp(diff)`` for ``diff <= 0``, with arguments below ``_EXP_FLOOR`` raised to it (``-inf`` stays 0)."""
    return torch.exp(diff.clamp_min(_EXP_FLOOR)) * (diff > -math.inf)
