"""Minibatch couplings of two point clouds: pairs drawn from an optimal-transport plan between two minibatches, the
coupling that SF2M (Tong et al., AISTATS 2024) and DSBM's minibatch-OT start train on (maths.md §J.1).

``plan(x0, x1, sigma, kind)`` is the ``(n, m)`` plan between the uniform empirical measures, for the squared
Euclidean cost:

* ``"entropic"``: the entropic OT plan of the Brownian reference ``sigma W`` (POT's ``reg = 2 sigma**2``, §G.1),
  by :func:`sinkhorn`;
* ``"exact"``: the unregularised OT plan (POT's network simplex; the limit ``sigma -> 0``);
* ``"independent"``: ``1 / (n m)`` everywhere (the product coupling).

``pairs(x0, x1, sigma, kind, generator)`` draws ``n`` pairs ``(i, j)`` from the plan, with replacement. The plan of
each minibatch is computed on the batch a process (or shard) draws, so with ``S`` shards it is the plan of
``batch_size / S`` points a side: a blurrier coupling than one process with the whole batch.
"""

from __future__ import annotations

import math
import warnings

import ot
import torch

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_choice, check_positive_float

__all__ = ["COUPLINGS", "sinkhorn", "pairs", "plan", "round_to_marginals"]

COUPLINGS = ("entropic", "exact", "independent")
#: Sinkhorn iterations at most, and the L1 error of the row marginals at which they stop (the plan is then rounded
#: onto the marginals exactly; measured L1 distances to the converged plan: 0.002-0.02, up to ~0.05 at small sigma
#: in 64+ dimensions when the cap stops the iteration).
SINKHORN_ITERATIONS = 500
SINKHORN_TOLERANCE = 1e-3
_CHECK_EVERY = 10
#: Kernel entries below exp(_EXP_FLOOR) are set to 0 (CPU exp is slow on arguments that underflow), and the
#: scalings are absorbed into the potentials once one of them leaves exp(+-_ABSORB_AT).
_EXP_FLOOR = -80.0
_ABSORB_AT = 30.0
#: A marginal error above this when the iterations run out is reported (a warning, once per call site).
_WARN_AT = 1e-2


def sinkhorn(cost: torch.Tensor, reg: float, iterations: int = SINKHORN_ITERATIONS,
             tolerance: float = SINKHORN_TOLERANCE) -> tuple[torch.Tensor, float, int]:
    """The entropic OT plan ``argmin <P, C> + reg KL(P | a b^T)`` between uniform weights ``a``, ``b`` (Peyré &
    Cuturi 2019, Eq. 4.2), rounded onto the marginals; also the L1 row-marginal error before rounding and the
    number of iterations.

    The plan is ``diag(s_a) K diag(s_b)`` with the stabilised kernel ``K_ij = exp((f_i + g_j - C_ij) / reg)``
    (Schmitzer 2019, "absorption"): Sinkhorn's scalings ``s_a = a / K s_b``, ``s_b = b / K^T s_a`` (two
    matrix-vector products an iteration), the scalings moved into the potentials ``f, g`` whenever one leaves
    ``exp(+-30)``. The potentials start at a solution of the exact OT problem's dual (network simplex; ``f`` its
    c-transform ``min_j (C_ij - g_j)``, so that ``f_i + g_j <= C_ij`` holds even if the simplex stopped early): the
    entropic potentials tend to such a solution as ``reg -> 0`` (not necessarily this one: the problem is degenerate
    for uniform weights). Every row of ``K`` then has an entry 1 (every column too at an exact solution), so the
    plain kernel's underflow at small ``reg`` (``exp(-C / reg)`` is 0 in floating point once costs exceed ~``700
    reg``) cannot empty one; and a plan that is nearly a permutation, which needs thousands of iterations from a cold
    start, needed tens to hundreds from there in our measurements (maths.md §J.1). It stops at ``tolerance`` or
    after ``iterations`` (a warning if the marginals are still more than 1 % off), then :func:`round_to_marginals`
    makes it a coupling. ``cost`` in float64."""
    a, b = _uniform_weights(cost)
    if iterations < 1 or not tolerance > 0:
        raise ConfigError(f"Sinkhorn needs at least one iteration and a positive tolerance, got iterations="
                          f"{iterations!r} and tolerance={tolerance!r}.")
    _, duals = ot.emd(a, b, cost, log=True)
    g = duals["v"]
    f = (cost - g[None, :]).amin(1)  # the c-transform: f_i + g_j <= C_ij even if the simplex stopped early
    kernel = _stabilised_kernel(f, g, cost, reg)
    scale_b = torch.ones_like(b)
    error, used = math.inf, 0
    while used < iterations:
        scale_a = a / (kernel @ scale_b)
        scale_b = b / (kernel.T @ scale_a)
        used += 1
        if used % _CHECK_EVERY == 0 or used == iterations:
            error = float((scale_a * (kernel @ scale_b) - a).abs().sum())
            if error < tolerance:
                break
            log_a, log_b = scale_a.log(), scale_b.log()
            if max(float(log_a.abs().max()), float(log_b.abs().max())) > _ABSORB_AT:
                f, g = f + reg * log_a, g + reg * log_b
                kernel, scale_b = _stabilised_kernel(f, g, cost, reg), torch.ones_like(b)
                scale_a = torch.ones_like(a)
    if error > _WARN_AT:
        warnings.warn(f"the entropic minibatch plan stopped {error:.1e} (L1) from its marginals after {used} "
                      f"Sinkhorn iterations and was rounded onto them; coupling='exact' is its sigma -> 0 limit.",
                      RuntimeWarning, stacklevel=3)
    return round_to_marginals(scale_a[:, None] * kernel * scale_b[None, :], a, b), error, used


def _uniform_weights(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The uniform weights ``1/n`` and ``1/m`` of the two sides of an ``(n, m)`` cost matrix, in its dtype."""
    n, m = cost.shape
    return (torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device),
            torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device))


def _check_nonempty(x0: torch.Tensor, x1: torch.Tensor) -> None:
    if x0.shape[0] == 0 or x1.shape[0] == 0:
        raise ConfigError("a minibatch coupling needs at least one point on each side.")


def _stabilised_kernel(f: torch.Tensor, g: torch.Tensor, cost: torch.Tensor, reg: float) -> torch.Tensor:
    """``exp((f_i + g_j - C_ij) / reg)``, entries below ``exp(_EXP_FLOOR)`` set to 0 (float64 costs: in float32 the
    exponent loses its accuracy at small ``reg``)."""
    exponent = (f[:, None] + g[None, :] - cost) / reg
    return torch.where(exponent < _EXP_FLOOR, 0.0, torch.exp(exponent.clamp(_EXP_FLOOR, -_EXP_FLOOR)))


def round_to_marginals(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The nonnegative matrix ``plan`` moved onto the couplings of ``a`` and ``b`` (Altschuler, Weed & Rigollet
    2017, Alg. 2): rows scaled down to at most ``a``, columns to at most ``b``, and the missing mass added as the
    rank-one ``err_a err_b^T / |err_a|_1``; the L1 change is at most twice the marginal error."""
    plan = plan * (a / plan.sum(1).clamp_min(torch.finfo(plan.dtype).tiny)).clamp(max=1.0)[:, None]
    plan = plan * (b / plan.sum(0).clamp_min(torch.finfo(plan.dtype).tiny)).clamp(max=1.0)[None, :]
    err_a, err_b = (a - plan.sum(1)).clamp_min(0), (b - plan.sum(0)).clamp_min(0)
    missing = err_a.sum()
    if float(missing) > 0:
        plan = plan + err_a[:, None] * err_b[None, :] / missing
    return plan


def plan(x0: torch.Tensor, x1: torch.Tensor, sigma: float, kind: str = "entropic",
         tolerance: float = SINKHORN_TOLERANCE, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """The ``(n, m)`` OT plan of the kind ``kind`` between the rows of ``x0`` (n, ...) and ``x1`` (m, ...), with
    uniform marginals, float64 on ``x0``'s device; ``tolerance`` and ``iterations`` bound the entropic
    iteration (:func:`sinkhorn`)."""
    check_choice(kind, COUPLINGS, "coupling")
    _check_nonempty(x0, x1)
    if kind == "independent":
        n, m = x0.shape[0], x1.shape[0]
        return torch.full((n, m), 1.0 / (n * m), dtype=torch.float64, device=x0.device)
    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).square()
    if not torch.isfinite(cost).all():
        raise ConfigError("a minibatch coupling got non-finite points; check the data for NaN or inf.")
    if kind == "exact":
        return ot.emd(*_uniform_weights(cost), cost)
    reg = 2.0 * check_positive_float(sigma, "sigma") ** 2
    return sinkhorn(cost, reg, iterations, tolerance)[0]


def pairs(x0: torch.Tensor, x1: torch.Tensor, sigma: float, kind: str, generator: torch.Generator | None,
          count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices into ``x0`` and ``x1`` of ``count`` (default ``len(x0)``) pairs drawn from :func:`plan`: the
    plan's row marginal is uniform, so ``i`` is uniform and ``j`` is drawn from row ``i`` of the plan."""
    _check_nonempty(x0, x1)
    count = count or x0.shape[0]
    i = torch.randint(x0.shape[0], (count,), generator=generator, device=x0.device)
    if kind == "independent":  # the product plan: no matrix needed
        return i, torch.randint(x1.shape[0], (count,), generator=generator, device=x0.device)
    rows = plan(x0, x1, sigma, kind).clamp_min(0)[i]
    return i, torch.multinomial(rows, 1, generator=generator)[:, 0]
