"""Exact log-likelihood through the probability-flow ODE (instantaneous change of variables).

A velocity field ``v(x, t)`` transports densities by the continuity equation, so along one of its trajectories
``dx_t/dt = v(x_t, t)`` the log density obeys the instantaneous change of variables (Chen et al. 2018, *Neural ODEs*,
Theorem 1; Grathwohl et al. 2019, *FFJORD*, §2):

    d log p_t(x_t) / dt = -div v(x_t, t) = -tr(dv/dx (x_t, t)).

Integrating from the data side ``t0`` to the prior side ``t1`` gives

    log p_{t0}(x) = log p_{t1}(x_{t1}) + int_{t0}^{t1} div v(x_t, t) dt,        x_{t0} = x.

For a score-based model ``v`` is the probability-flow velocity ``f - g^2 score / 2`` of maths.md §1.1
(:meth:`sbridge.processes.LinearSDE.probability_flow`), whose marginals are those of the forward SDE; with the exact
score and the exact law of ``X_T`` as ``log p_{t1}`` the result is exact up to the ODE solver's error (Song et al.
2021, *Score-Based Generative Modeling through SDEs*, §4.3 and App. D.2).

The divergence is computed exactly (one vector-Jacobian product per coordinate) for small events, or estimated with
Hutchinson's (1989) trace estimator ``tr(J) = E[e^T J e]`` with Rademacher noise ``e``, one vector-Jacobian product
per noise, the noise held fixed along the whole trajectory as in FFJORD so the ODE stays deterministic.

Everything here is evaluation-only: the solver runs without a graph to the model's parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError, DataError
from sbridge.core.tensors import flat, sum_event
from sbridge.core.validation import check_choice, check_positive_int, check_seed

Field = Callable[[torch.Tensor, float], torch.Tensor]

DIVERGENCE_METHODS = ("exact", "hutchinson")
#: Coordinates per sample up to which ``divergence="auto"`` computes divergences exactly (one backward pass per
#: coordinate); above it, Hutchinson's estimator (one pass per probe).
EXACT_MAX_DIM = 16


def divergence_method(method: str, n_dims: int, exact_max_dim: int = EXACT_MAX_DIM) -> str:
    """The divergence a computation uses: ``"exact"`` or ``"hutchinson"`` as asked, or for ``"auto"`` exact when a
    sample has at most ``exact_max_dim`` coordinates (the one rule of every likelihood, bound and loss)."""
    if method == "auto":
        return "exact" if n_dims <= check_positive_int(exact_max_dim, "exact_max_dim") else "hutchinson"
    return check_choice(method, DIVERGENCE_METHODS, "divergence")
#: torchdiffeq's adaptive Runge–Kutta solvers: they accept ``step_t``, which makes a step end exactly at ``t1``.
_RK_ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")


# ============================================================================================ divergence
def rademacher(shape: tuple[int, ...], *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Independent ``±1`` entries with probability 1/2 each (mean 0, covariance ``I``)."""
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


def _vjp(value: torch.Tensor, x: torch.Tensor, cotangent: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``cotangent^T dv/dx`` per sample (zeros when ``v`` does not depend on ``x``)."""
    (grad,) = torch.autograd.grad(value, x, cotangent, retain_graph=True, create_graph=create_graph,
                                  allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def divergence(fn: Field, x: torch.Tensor, t: float, *, method: str = "exact", noise: torch.Tensor | None = None,
               create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and divergence ``div_x fn(x, t) = tr(d fn / dx)`` of a vector field, per sample.

    ``x`` has shape ``(batch, *event)`` (any event shape) and ``fn(x, t)`` must return the same shape, acting on
    each sample independently (no coupling across the batch, e.g. no batch norm in training mode), since one
    vector-Jacobian product serves the whole batch.

    * ``method="exact"``: ``sum_i e_i^T J e_i`` over the ``n`` flattened coordinates, one vector-Jacobian product
      with the basis vector ``e_i`` each (``n`` backward passes, one forward pass).
    * ``method="hutchinson"``: Hutchinson's (1989) unbiased estimator ``tr(J) = E[e^T J e]`` for ``E[e e^T] = I``,
      one vector-Jacobian product per noise. ``noise`` has the shape of ``x`` (one noise per sample) or
      ``(k, *x.shape)`` (the ``k`` estimates are averaged); drawn as Rademacher from the global generator when
      ``None``. With Rademacher noise the estimate is exact when ``J`` is diagonal, and its variance is
      ``2 sum_{i != j} ((J_ij + J_ji) / 2)^2`` otherwise.

    Returns ``(value, div)`` of shapes ``(batch, *event)`` and ``(batch,)``, detached unless ``create_graph``
    (``create_graph=False``, the default, is what the likelihood ODE uses: evaluation only). ``x`` itself is not
    modified; grad mode is enabled inside, so this works under ``torch.no_grad()``.
    """
    method = check_choice(method, DIVERGENCE_METHODS, "divergence method")
    with torch.enable_grad():
        # with create_graph, a state that already carries a graph keeps it (training through the divergence)
        xr = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
        value = fn(xr, t)
        if value.shape != x.shape:
            raise DataError(f"the vector field returned shape {tuple(value.shape)} for input {tuple(x.shape)}; "
                            "it must return the shape of its input.")
        if not value.requires_grad:  # a field that ignores x (or is computed without grad): zero divergence
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        elif method == "exact":
            n = x[0].numel()
            div = torch.zeros(x.shape[0], dtype=value.dtype, device=value.device)
            for i in range(n):
                # a fresh basis vector each time: with create_graph the double-backward graph may keep it
                basis = torch.zeros(x.shape[0], n, dtype=value.dtype, device=value.device)
                basis[:, i] = 1
                div = div + flat(_vjp(value, xr, basis.reshape(x.shape), create_graph))[:, i]
        else:
            if noise is None:
                noise = rademacher(tuple(x.shape), dtype=x.dtype, device=x.device)
            noises = noise.unsqueeze(0) if noise.shape == x.shape else noise
            if noises.shape[1:] != x.shape:
                raise DataError(f"Hutchinson noise of shape {tuple(noise.shape)} does not match the data "
                                f"{tuple(x.shape)}; pass x.shape or (k, *x.shape).")
            noises = noises.to(value)
            div = sum(sum_event(_vjp(value, xr, e, create_graph) * e) for e in noises) / noises.shape[0]
    if create_graph:
        return value, div
    return value.detach(), div.detach()


_divergence = divergence  # for functions whose ``divergence`` argument names the method


# ============================================================================================ log-likelihood
class _AugmentedField:
    """The ODE ``d(x, delta)/dt = (v(x, t), div v(x, t))`` for torchdiffeq, counting its evaluations."""

    def __init__(self, velocity: Field, method: str, noise: torch.Tensor | None, t_lo: float, t_hi: float) -> None:
        self.velocity, self.method, self.noise = velocity, method, noise
        self.t_lo, self.t_hi = t_lo, t_hi
        self.nfe = 0

    def __call__(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe += 1
        # torchdiffeq's initial-step heuristic may probe one point past t1; keep the model inside [t0, t1]
        s = min(max(float(t), self.t_lo), self.t_hi)
        value, div = divergence(self.velocity, state[0], s, method=self.method, noise=self.noise)
        return value, div.to(state[1].dtype)


@torch.no_grad()
def log_prob_ode(velocity: Field, x: torch.Tensor, *, t0: float, t1: float,
                 prior_log_prob: Callable[[torch.Tensor], torch.Tensor], method: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "auto", exact_max_dim: int = EXACT_MAX_DIM,
                 hutchinson_samples: int = 1, seed: int = 0, return_nfe: bool = False,
                 options: dict[str, Any] | None = None) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Log density ``log p_{t0}(x)`` in nats, shape ``(batch,)``, by the instantaneous change of variables.

    Integrates the augmented state ``(x_t, delta_t)`` with torchdiffeq's ``odeint`` from ``t0`` (data side) to
    ``t1`` (prior side),

        dx_t/dt = v(x_t, t),      d delta_t/dt = div v(x_t, t),      x_{t0} = x,  delta_{t0} = 0,

    and returns ``prior_log_prob(x_{t1}) + delta_{t1}`` (Chen et al. 2018, Theorem 1; Grathwohl et al. 2019:
    ``d log p_t(x_t)/dt = -div v``). For a score model pass ``velocity = lambda x, t: proc.probability_flow(x, t,
    score(x, t))`` (maths.md §1.1), ``t0 = proc.t_min``, ``t1 = proc.T`` and ``prior_log_prob = proc.prior_log_prob``;
    the result is then the model's density of ``X_{t_min}``, exact up to the ODE error and the gap between the prior
    and the true law of ``X_T``.

    * ``velocity(x, t)``: ``x`` of shape ``(batch, *event)``, ``t`` a float; called under ``torch.enable_grad()``
      on a leaf copy of ``x`` with ``requires_grad=True``. Its outputs are detached, so no graph leaks between
      steps. It must act on each sample independently.
    * ``divergence``: ``"exact"``, ``"hutchinson"``, or ``"auto"`` = exact when a sample has at most
      ``exact_max_dim`` scalars, else Hutchinson. Hutchinson uses ``hutchinson_samples`` Rademacher noises of the
      shape of ``x``, drawn once from a ``torch.Generator`` seeded with ``seed`` and held fixed along the trajectory
      (FFJORD), and averages their estimates; the result is then an unbiased estimate of the exact one up to ODE
      error, and deterministic given ``seed``.
    * ``method``, ``rtol``, ``atol``: torchdiffeq's solver and tolerances (applied to both ``x`` and ``delta``);
      adaptive Runge–Kutta methods get ``step_t = [t1]`` so that no step evaluates the model beyond ``t1``, and the
      time passed to the model is clamped to ``[t0, t1]`` (this only affects torchdiffeq's initial step-size probe).
      ``options`` are extra torchdiffeq options (e.g. ``{"step_size": 0.01}`` for the fixed-grid methods).
    * The computation runs in float64 when ``x`` is float64 (the model must then accept float64), else in ``x``'s
      dtype.
    * ``return_nfe``: also return the number of evaluations of the augmented field, i.e. forward passes of
      ``velocity`` (each followed by ``n`` backward passes for the exact divergence, ``hutchinson_samples``
      otherwise).
    """
    from torchdiffeq import odeint

    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise DataError("x must be a floating-point tensor of shape (batch, *event_shape).")
    if float(t0) == float(t1):
        raise ConfigError(f"t0 and t1 must differ, got t0 = t1 = {t0}.")
    n = x[0].numel()
    div_method = divergence_method(divergence, n, exact_max_dim)  # (the argument shadows the function divergence)
    noise = None
    if div_method == "hutchinson":
        k = check_positive_int(hutchinson_samples, "hutchinson_samples")
        gen = torch.Generator(device=x.device)
        gen.manual_seed(int(seed))
        noise = rademacher((k, *x.shape), generator=gen, dtype=x.dtype, device=x.device)
    x = x.detach()
    ode = _AugmentedField(velocity, div_method, noise, min(t0, t1), max(t0, t1))
    times = torch.tensor([float(t0), float(t1)], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                         device=x.device)
    opts = dict(options or {})
    if method in _RK_ADAPTIVE:
        opts.setdefault("step_t", times[-1:])
    state0 = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    xs, deltas = odeint(ode, state0, times, method=method, rtol=rtol, atol=atol, options=opts)
    log_prob = prior_log_prob(xs[-1]).detach().to(x.dtype).reshape(x.shape[0]) + deltas[-1]
    return (log_prob, ode.nfe) if return_nfe else log_prob


# ============================================================================================ path-space bound
def elbo_grid(t0: float, t1: float, steps: int, power: float = 2.0) -> list[float]:
    """``steps + 1`` times from ``t0`` to ``t1``, uniform in ``((t - t0) / (t1 - t0))^(1/power)``: crowded near the
    data end, where the bound's integrand varies fastest (``power = 1``: uniform)."""
    steps = check_positive_int(steps, "steps")
    return [t0 + (t1 - t0) * (i / steps) ** power for i in range(steps)] + [float(t1)]


@torch.no_grad()
def path_bound_terms(encode: Field, decode: Field, process: Any, x: torch.Tensor, times: Sequence[float], *,
                     exact_marginals: bool = False, divergence: str = "auto", exact_max_dim: int = EXACT_MAX_DIM,
                     generator: torch.Generator | None = None, create_graph: bool = False,
                     score: Field | None = None) -> dict[str, torch.Tensor]:
    """Per-sample terms (nats, shape ``(batch,)``) of the path-space evidence bound of a decode SDE, estimated along
    the encode SDE from each point of ``x`` (maths.md §A.2, §A.4, §1.4; Song, Durkan, Murray & Ermon 2021, Thm. 4;
    Huang, Lim & Courville 2021):

        log q(x) >= E[ log pi(X_T) - int_t0^T ( |F - B|^2 / (2 g^2) - div B )(X_t, t) dt | X_t0 = x ],

    where the encode SDE is ``dX = F dt + g dW`` from the data (forward in time) and the decode SDE, run backward
    from the prior ``pi``, is ``dX = B dt + g dW_bar`` (``B`` its drift written in forward time). It is the
    likelihood bound of the VAE reading of every SB-type model: the prior term plus the drift matching, with the
    entropy of the encoder's marginals cancelled by integration by parts, so no score of the encoder is needed.
    Special cases: SGM (``F = f``, ``B = f - g^2 s``) gives ``-int (g^2 |s|^2 / 2 + g^2 div s - div f)``;
    SB-FBSDE (``F = f + g Z``, ``B = f - g Z_hat``) gives its likelihood ``-int (|Z + Z_hat|^2 / 2 + g div Z_hat -
    div f)``. The bound is tight, for every ``x``, when the decode SDE is the exact time reversal of the encode SDE
    and ``pi`` is its law at ``T``.

    ``process`` is the reference (a :class:`~sbridge.processes.linear.LinearSDE`): its ``g``, its prior ``pi`` and
    its transitions. Two estimators of the integral:

    * ``exact_marginals=True``, when the encoder *is* the reference (``F = f``, score models): ``X_t`` is drawn from
      the reference's closed-form marginal given ``x``, independently at the midpoint of each interval of
      ``times`` (no path discretisation error; second-order quadrature); ``encode`` and ``decode`` get a float
      time;
    * otherwise one encode path per point, each step the reference's exact transition plus the rest of ``F`` by
      Euler (:meth:`LinearSDE.step`), and the trapezoid rule; ``encode`` and ``decode`` get a ``(batch,)`` time.
      ``score`` (an estimate of ``grad log p_t``) adds ``"entropy"``: ``int (div F + g^2 |score|^2 / 2) dt``, the
      entropy production of the encode SDE, so that ``prior_nll - entropy`` is the prior loss ``KL(p_T || pi)``
      plus the data's entropy. ``create_graph=True`` keeps the graph through the paths and the divergences
      (training); else the terms are detached.

    Returns ``"prior_nll"`` (``-log pi(X_T)``) and ``"drift"`` (the integral), so that ``-(prior_nll + drift)`` is the
    bound (:func:`path_elbo`). ``times`` ascend from the data side to ``T`` (:func:`elbo_grid`). Divergences are
    exact or Hutchinson (``divergence`` as in :func:`log_prob_ode`, with a fresh Rademacher noise each time from
    ``generator``). Average several calls to shrink the Monte-Carlo error.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise DataError("x must be a floating-point tensor of shape (batch, *event_shape).")
    if len(times) < 2 or any(b <= a for a, b in zip(times, times[1:], strict=False)):
        raise ConfigError("times must be increasing, from the data side to the prior side, with at least two values.")
    if exact_marginals and (create_graph or score is not None):
        raise ConfigError("exact_marginals draws the reference's own marginals: it takes no score and no graph.")
    method = divergence_method(divergence, x[0].numel(), exact_max_dim)

    def probe(state: torch.Tensor) -> torch.Tensor | None:
        return (rademacher(tuple(state.shape), generator=generator, dtype=state.dtype, device=state.device)
                if method == "hutchinson" else None)

    if exact_marginals:
        x = x.detach()
        drift = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for t_lo, t_hi in zip(times[:-1], times[1:], strict=True):
            t = 0.5 * (t_lo + t_hi)
            state = process.sample_marginal(x, t, generator=generator)[0]
            b, div_b = _divergence(decode, state, t, method=method, noise=probe(x))
            f = encode(state, t)
            g2 = process.g(t, x) ** 2
            drift = drift + (t_hi - t_lo) * (0.5 * sum_event((f - b) ** 2 / g2) - div_b)
        end = process.sample_marginal(x, times[-1], generator=generator)[0]
        return {"prior_nll": -process.prior_log_prob(end).to(x.dtype).reshape(x.shape[0]), "drift": drift}

    def integrands(state: torch.Tensor, tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        noise = probe(state)
        b, div_b = _divergence(lambda y, _t: decode(y, tt), state, 0.0, method=method, noise=noise,
                               create_graph=create_graph)
        g2 = process.g(tt, state) ** 2
        if score is None:
            with torch.set_grad_enabled(create_graph):
                f = encode(state, tt)
            return f, 0.5 * sum_event((f - b) ** 2 / g2) - div_b, None
        f, div_f = _divergence(lambda y, _t: encode(y, tt), state, 0.0, method=method, noise=noise,
                               create_graph=create_graph)
        with torch.no_grad():
            s = score(state, tt)
        return f, 0.5 * sum_event((f - b) ** 2 / g2) - div_b, div_f + 0.5 * sum_event(g2 * s**2)

    t0 = torch.full((x.shape[0],), times[0], dtype=x.dtype, device=x.device)
    state = x if create_graph else x.detach()
    f, drift_h, entropy_h = integrands(state, t0)
    drift = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    entropy = torch.zeros_like(drift)
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        dt = t_next - t
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        state = process.step(state, t, t_next, z, extra=f - process.drift(state, t))
        f_next, drift_next, entropy_next = integrands(state, torch.full_like(t0, t_next))
        drift = drift + 0.5 * dt * (drift_h + drift_next)
        if entropy_h is not None:
            entropy = entropy + 0.5 * dt * (entropy_h + entropy_next)
        f, drift_h, entropy_h = f_next, drift_next, entropy_next
    out = {"prior_nll": -process.prior_log_prob(state), "drift": drift}
    if score is not None:
        out["entropy"] = entropy
    return out if create_graph else {k: v.detach() for k, v in out.items()}


def path_elbo(encode: Field, decode: Field, process: Any, x: torch.Tensor, times: Sequence[float], *,
              exact_marginals: bool = False, divergence: str = "auto", exact_max_dim: int = EXACT_MAX_DIM,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """The path-space evidence lower bound ``-(prior_nll + drift)`` of :func:`path_bound_terms` (nats, shape
    ``(batch,)``; maths.md §A.2), one draw per point."""
    terms = path_bound_terms(encode, decode, process, x, times, exact_marginals=exact_marginals,
                             divergence=divergence, exact_max_dim=exact_max_dim, generator=generator)
    return -(terms["prior_nll"] + terms["drift"])


def mean_path_elbo(encode: Field, decode: Field, process: Any, x: torch.Tensor, *, steps: int, repeats: int = 1,
                   exact_marginals: bool = False, divergence: str = "auto", seed: int = 0) -> torch.Tensor:
    """:func:`path_elbo` on :func:`elbo_grid` across the reference's ``[t_min, T]``, averaged over ``repeats``
    draws from one generator seeded with ``seed``."""
    times = elbo_grid(process.t_min, process.T, check_positive_int(steps, "steps"))
    gen = make_generator(check_seed(seed), x.device)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(check_positive_int(repeats, "repeats")):
        total = total + path_elbo(encode, decode, process, x, times, exact_marginals=exact_marginals,
                                  divergence=divergence, generator=gen)
    return total / repeats


# ============================================================================================ bits per dimension
def nats_to_bits_per_dim(log_prob: torch.Tensor | float, n_dims: int, *,
                         dequantization_levels: int | None = None) -> torch.Tensor:
    """Bits per dimension ``-log p / (n_dims ln 2)`` of a log density ``log p`` in nats.

    Without ``dequantization_levels`` this is the plain conversion, for ``log p`` in whatever scaling the data
    had. With ``dequantization_levels = K`` the data are images with ``K`` intensity levels and ``log p`` must be
    the log density of the uniformly dequantised data **scaled to [0, 1]**, ``y = (k + u) / K`` with integer
    ``k in {0..K-1}`` and ``u ~ U(0, 1)^D`` (:func:`uniform_dequantize`). The density of ``k + u`` on the integer
    scale ``[0, K]^D`` is ``p(y) / K^D``, so the returned value is the standard discrete bits/dim

        bpd = -log p(y) / (D ln 2) + log2 K,

    which averaged over ``u`` upper-bounds ``-log2 P(k) / D`` of the discrete model (Theis et al. 2016; Ho et al.
    2019). A uniform density on ``[0, 1]^D`` gives exactly ``log2 K`` (8 for ``K = 256``). A model trained on data
    scaled to ``[-1, 1]`` (``y' = 2 y - 1``) must first convert: ``log p(y) = log p'(y') + D ln 2``.
    """
    n_dims = check_positive_int(n_dims, "n_dims")
    lp = torch.as_tensor(log_prob)
    if not lp.is_floating_point():
        lp = lp.to(torch.float64)
    bpd = -lp / (n_dims * math.log(2.0))
    if dequantization_levels is not None:
        bpd = bpd + math.log2(check_positive_int(dequantization_levels, "dequantization_levels"))
    return bpd


def uniform_dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of data in ``[0, 1]`` quantised to ``levels = K`` values.

    ``x`` holds ``k / (K - 1)`` for integers ``k in {0..K-1}`` (e.g. 8-bit images as ``ToTensor`` gives them,
    ``k / 255``); returns ``y = (k + u) / K`` with ``u ~ U(0, 1)`` per scalar, so each level ``k`` becomes the cell
    ``[k / K, (k + 1) / K)`` of ``[0, 1)`` — i.e. ``k / K`` plus ``U(0, 1 / K)`` noise. The log density of ``y`` is
    what :func:`nats_to_bits_per_dim` with ``dequantization_levels = K`` expects (the convention of Song et al. 2021's
    likelihood evaluation, ``(255 x + u) / 256``). ``k`` is recovered by rounding ``x (K - 1)``.
    """
    levels = check_positive_int(levels, "levels")
    if levels < 2:
        raise ConfigError(f"levels must be at least 2, got {levels}.")
    if not x.is_floating_point():
        raise DataError("x must be a floating-point tensor with values in [0, 1].")
    if bool((x < 0).any() or (x > 1).any()):
        raise DataError("uniform_dequantize expects data scaled to [0, 1]; rescale it first.")
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (k + u) / levels
