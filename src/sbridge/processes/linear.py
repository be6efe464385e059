"""Reference processes: linear Gaussian SDEs ``dX = F(t) X dt + G(t) dW``, one abstraction for every solver.

Every reference in sbridge has the form

    F(t) = -beta(t) D / 2,        G(t) = sqrt(beta(t)) I,

with a positive rate ``beta(t)`` (a :class:`Schedule`) and a constant operator ``D`` (a :class:`DriftMatrix`): zero
(VE, Brownian), a scalar (VP, OU), a diagonal over the event, or a full matrix over the flattened event (VSDM's
``D = I - 2A``, maths.md §C). With the integrated rate ``B(t) = int_0^t beta`` as the clock, ``F`` and ``G G^T``
commute at all times, which gives the marginal in closed form (maths.md §C.2, §E.2):

    X_t | X_0 ~ N(M_t X_0, Sigma_t),   M_t = exp(-B D / 2),   Sigma_t = int_0^B exp(-u D / 2) exp(-u D^T / 2) du.

For a symmetric ``D = U diag(lambda) U^T`` this is ``Sigma_t = U diag((1 - exp(-lambda B)) / lambda) U^T``; for a
general ``D`` it is the matrix fraction ``Sigma = C H^{-1}`` with ``[C; H] = expm(B [[-D/2, I], [0, D^T/2]]) [0; I]``.
The covariance is returned as an operator (:class:`DiagonalCovariance`, :class:`DenseCovariance`) that samples,
solves, and gives log-determinants and Cholesky factors.

Time runs from data (``t = 0``) to prior (``t = T``); ``t`` is a float or a ``(batch,)`` tensor, and data have shape
``(batch, *event_shape)``. Given a score, a process also gives the reverse-time drift ``f - g^2 score`` and the
probability-flow velocity ``f - g^2 score / 2`` (maths.md §1.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError, NotPositiveDefiniteError
from sbridge.core.tensors import as_time, expand_as_batch, flat, sum_event
from sbridge.core.validation import check_choice, check_positive_float
from sbridge.numerics.integrators import euler_maruyama, time_grid

LOG_2PI = math.log(2 * math.pi)


# ============================================================================================ rate schedules
class Schedule:
    """A positive rate ``beta(t)`` on ``[0, T]`` and its integral ``B(t) = int_0^t beta``."""

    name = ""
    T = 1.0

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError


class ConstantRate(Schedule):
    """``beta(t) = beta`` (Brownian motion with ``beta = sigma^2``, Ornstein–Uhlenbeck)."""

    name = "constant"

    def __init__(self, beta: float, T: float = 1.0) -> None:
        self.value = check_positive_float(beta, "beta")
        self.T = check_positive_float(T, "T")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.value)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        return self.value * t

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.value, "T": self.T}


class PowerRate(Schedule):
    """``beta(t) = beta_min + (t / T)^power (beta_max - beta_min)``: linear for ``power = 1`` (VP, Song et al. 2021),
    VSDM's ``beta_t = beta_min + t^r (beta_max - beta_min)`` otherwise (maths.md §C)."""

    name = "power"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, power: float = 1.0, T: float = 1.0) -> None:
        self.beta_min = check_positive_float(beta_min, "beta_min")
        self.beta_max = check_positive_float(beta_max, "beta_max")
        self.power = check_positive_float(power, "power")
        self.T = check_positive_float(T, "T")
        if self.beta_max < self.beta_min:
            raise ConfigError(f"beta_max ({beta_max}) must be at least beta_min ({beta_min}).")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + (t / self.T) ** self.power * (self.beta_max - self.beta_min)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        r = self.power
        return self.beta_min * t + (self.beta_max - self.beta_min) * self.T * (t / self.T) ** (r + 1) / (r + 1)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "power": self.power,
                "T": self.T}


class GeometricNoise(Schedule):
    """VE noise levels ``sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T)`` with ``beta = d sigma^2 / dt``, so
    ``B(t) = sigma(t)^2 - sigma_min^2`` exactly (Song et al. 2021)."""

    name = "geometric"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0, T: float = 1.0) -> None:
        self.sigma_min = check_positive_float(sigma_min, "sigma_min")
        self.sigma_max = check_positive_float(sigma_max, "sigma_max")
        self.T = check_positive_float(T, "T")
        if self.sigma_max <= self.sigma_min:
            raise ConfigError(f"sigma_max ({sigma_max}) must exceed sigma_min ({sigma_min}).")

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) ** 2 * (2 * math.log(self.sigma_max / self.sigma_min) / self.T)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) ** 2 - self.sigma_min**2

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T}


SCHEDULES: dict[str, type[Schedule]] = {"constant": ConstantRate, "power": PowerRate, "geometric": GeometricNoise}


def _from_spec(spec: dict[str, Any], registry: dict[str, type], what: str) -> Any:
    """Build ``registry[spec["name"]](**rest)`` with one-sentence errors for a bad name or bad parameters."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{what} must be a name or a dict with a 'name' key, got {spec!r}.")
    params = dict(spec)
    name = check_choice(params.pop("name"), tuple(registry), what)
    cls = registry[name]
    try:
        return cls(**params)
    except TypeError:
        import inspect

        signature = inspect.signature(cls)
        required = [p for p, v in signature.parameters.items() if v.default is v.empty
                    and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p not in params]
        accepted = [p for p, v in signature.parameters.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
        need = f"it needs {', '.join(required)}; " if required else ""
        raise ConfigError(f"invalid parameters {sorted(params)} for {what} {name!r}: {need}it takes "
                          f"{', '.join(accepted)} (see sbridge.processes.linear.{cls.__name__}).") from None


def make_schedule(spec: dict[str, Any] | Schedule) -> Schedule:
    """Build a schedule from its config dict (``{"name": "power", "beta_max": 10}``) or return it unchanged."""
    return spec if isinstance(spec, Schedule) else _from_spec(spec, SCHEDULES, "schedule")


# ============================================================================================ covariance operators
class DiagonalCovariance:
    """``Sigma = diag(var)`` with ``var`` broadcastable to ``(batch, *event)``: one variance per sample (isotropic)
    or per coordinate (diagonal ``D``)."""

    def __init__(self, var: torch.Tensor) -> None:
        self.var = var

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma v``."""
        return self.var * v

    def mul_sqrt(self, z: torch.Tensor) -> torch.Tensor:
        """``L z`` with ``L L^T = Sigma``: turns standard normal noise into a draw of ``N(0, Sigma)``."""
        return self.var.sqrt() * z

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma^{-1} v``."""
        return v / self.var

    def score_from_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """``-L^{-T} eps``: the score ``-Sigma^{-1}(x - m)`` of the point ``x = m + L eps``."""
        return -eps / self.var.sqrt()

    def logdet(self, like: torch.Tensor) -> torch.Tensor:
        """``log det Sigma`` per sample of the batch ``like``, shape ``(batch,)``."""
        return sum_event(torch.log(self.var).expand_as(like))

    def log_prob(self, centred: torch.Tensor) -> torch.Tensor:
        """``log N(x; m, Sigma)`` given ``centred = x - m``, shape ``(batch,)``."""
        n = centred[0].numel()
        return -0.5 * (sum_event(centred * self.solve(centred)) + self.logdet(centred) + n * LOG_2PI)

    def dense(self, like: torch.Tensor) -> torch.Tensor:
        """The full ``(batch, n, n)`` matrix over the flattened event (for tests and small problems)."""
        return torch.diag_embed(flat(self.var.expand_as(like)))


class DenseCovariance:
    """A full covariance over the flattened event: ``cov`` has shape ``(n, n)`` or ``(batch, n, n)``."""

    def __init__(self, cov: torch.Tensor, what: str = "the covariance") -> None:
        self.cov = 0.5 * (cov + cov.transpose(-1, -2))
        self.what = what
        self._chol: torch.Tensor | None = None

    @property
    def cholesky(self) -> torch.Tensor:
        """Lower Cholesky factor ``L``; raises :class:`NotPositiveDefiniteError` when it does not exist."""
        if self._chol is None:
            chol, info = torch.linalg.cholesky_ex(self.cov)
            if bool((info != 0).any()) or not bool(torch.isfinite(chol).all()):
                raise NotPositiveDefiniteError(
                    f"{self.what} is not positive definite, so it has no Cholesky factor; keep the drift matrix D "
                    "well conditioned (a learned D with very negative eigenvalues makes exp(-B D / 2) overflow) "
                    "or lower the schedule's beta_max.")
            self._chol = chol
        return self._chol

    @staticmethod
    def _apply(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (m @ flat(v).unsqueeze(-1)).squeeze(-1).reshape(v.shape)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(self.cov, v)

    def mul_sqrt(self, z: torch.Tensor) -> torch.Tensor:
        return self._apply(self.cholesky, z)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        rhs = flat(v).unsqueeze(-1)
        return torch.cholesky_solve(rhs, self.cholesky.expand(v.shape[0], -1, -1)).squeeze(-1).reshape(v.shape)

    def score_from_noise(self, eps: torch.Tensor) -> torch.Tensor:
        L = self.cholesky.expand(eps.shape[0], -1, -1)
        out = torch.linalg.solve_triangular(L.transpose(-1, -2), flat(eps).unsqueeze(-1), upper=True)
        return -out.squeeze(-1).reshape(eps.shape)

    def logdet(self, like: torch.Tensor) -> torch.Tensor:
        d = 2 * torch.log(torch.diagonal(self.cholesky, dim1=-2, dim2=-1)).sum(-1)
        return d.expand(like.shape[0])

    def log_prob(self, centred: torch.Tensor) -> torch.Tensor:
        n = centred[0].numel()
        return -0.5 * (sum_event(centred * self.solve(centred)) + self.logdet(centred) + n * LOG_2PI)

    def dense(self, like: torch.Tensor) -> torch.Tensor:
        return self.cov.expand(like.shape[0], -1, -1)


Covariance = DiagonalCovariance | DenseCovariance


def _diagonal_transition(lam: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(-B lam / 2)`` and the variance ``B phi1(lam B)`` of an OU with rates ``lam`` over the clock ``B``
    (elementwise; ``lam`` and ``B`` broadcast)."""
    return torch.exp(-0.5 * lam * B), B * _phi1(lam * B)


def _per_piece(B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Clock increments ``(K,)`` shaped to broadcast against ``like`` of shape ``(K, *event)``."""
    return B.reshape(-1, *([1] * (like.ndim - 1)))


def _full_transition(D: torch.Tensor, B: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``M = exp(-B D / 2)`` and ``Sigma = int_0^B exp(-u D / 2) exp(-u D^T / 2) du`` (maths.md §C.2) for ``D`` of
    shape ``(n, n)`` or ``(batch, n, n)`` and clock ``B`` 0-d or ``(batch,)``: by eigendecomposition for a symmetric
    ``D``, else by the matrix-fraction decomposition."""
    n = D.shape[-1]
    Bm = B.reshape(-1, 1, 1)
    if symmetric:
        lam, U = torch.linalg.eigh(0.5 * (D + D.transpose(-1, -2)))
        lB = lam * Bm.squeeze(-1)                                          # (batch or 1, n)
        M = (U * torch.exp(-0.5 * lB).unsqueeze(-2)) @ U.transpose(-1, -2)
        cov = (U * (Bm.squeeze(-1) * _phi1(lB)).unsqueeze(-2)) @ U.transpose(-1, -2)
    else:
        Db = D.expand(max(Bm.shape[0], D.shape[0] if D.ndim == 3 else 1), n, n)
        eye = torch.eye(n, dtype=D.dtype, device=D.device).expand_as(Db)
        ham = torch.cat([torch.cat([-0.5 * Db, eye], -1),
                         torch.cat([torch.zeros_like(Db), 0.5 * Db.transpose(-1, -2)], -1)], -2)
        E = torch.linalg.matrix_exp(Bm * ham)
        M, C, H = E[:, :n, :n], E[:, :n, n:], E[:, n:, n:]
        cov = torch.linalg.solve(H.transpose(-1, -2), C.transpose(-1, -2)).transpose(-1, -2)
    if B.ndim == 0 and D.ndim == 2:
        M, cov = M.reshape(n, n), cov.reshape(n, n)
    return M, cov


def _phi1(z: torch.Tensor) -> torch.Tensor:
    """``(1 - exp(-z)) / z``, continued by 1 at ``z = 0`` (the variance factor of an OU over the clock ``B``)."""
    small = z.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 - 0.5 * z, -torch.expm1(-safe) / safe)


# ============================================================================================ the drift operator D
DRIFT_KINDS = ("zero", "scalar", "diagonal", "full")


class DriftOperator(nn.Module):
    """The operator ``D`` in ``F(t) = -beta(t) D / 2``, as the process reads it: its ``kind`` (``zero``, ``scalar``,
    ``diagonal`` over the event, ``full`` over the flattened event), :meth:`matrix`, and :meth:`apply` (``D x``).
    :class:`DriftMatrix` stores ``D``; a learned parametrisation (VSDM's ``D = I - 2A``) computes it.

    A drift that changes over time, constant on pieces ``[e_k, e_{k+1})`` (VSDM's time-varying scale of ``A``), sets
    :attr:`edges` to the ``K + 1`` times ``0 = e_0 < ... < e_K = T`` and returns the ``K`` matrices from
    :meth:`matrices`; the process then composes the pieces' exact transitions.
    """

    #: ``None`` for a constant ``D``; else the times bounding the pieces on which ``D`` is constant.
    edges: torch.Tensor | None = None

    def __init__(self, kind: str, *, learnable: bool, symmetric: bool, may_overflow: bool) -> None:
        super().__init__()
        self.kind = check_choice(kind, DRIFT_KINDS, "drift kind")
        #: Whether ``D`` is trained by the score loss's gradients (an ``nn.Parameter``).
        self.learnable = bool(learnable)
        #: (full kind) use the eigendecomposition path.
        self.symmetric = bool(symmetric)
        #: Whether exp(-B D / 2) can overflow (a learned D, or negative fixed rates): only then is the variance
        #: checked, which costs a host synchronisation.
        self.may_overflow = bool(may_overflow)

    def matrix(self) -> torch.Tensor:
        """The current value of ``D`` (a number, an event-shaped diagonal or an ``(n, n)`` matrix)."""
        raise NotImplementedError

    def matrices(self) -> torch.Tensor:
        """The ``K`` matrices of a piecewise-constant ``D``, stacked ``(K, ...)`` (only when :attr:`edges` is set)."""
        raise NotImplementedError("a constant drift matrix has no pieces")

    def config(self) -> dict[str, Any]:
        """JSON-compatible description (stored in a run's ``config.json``)."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, t: float | torch.Tensor | None = None) -> torch.Tensor:
        """``D x`` (``D_t x`` for a piecewise ``D``) for a batch ``x`` of shape ``(batch, *event)``."""
        if self.kind == "zero":
            return torch.zeros_like(x)
        if self.edges is None:
            d = self.matrix().to(x)
        else:
            tt = as_time(t, x).reshape(-1).contiguous()
            k = (torch.searchsorted(self.edges.to(tt), tt, right=True) - 1).clamp(0, len(self.edges) - 2)
            d = self.matrices().to(x)[k]                                     # (batch or 1, ...)
            if self.kind == "full":
                return (d @ flat(x).unsqueeze(-1)).squeeze(-1).reshape(x.shape)
            return d * x
        if self.kind == "full":
            return (flat(x) @ d.T).reshape(x.shape)
        return d * x


class DriftMatrix(DriftOperator):
    """A stored operator ``D``.

    ``kind``: ``zero``; ``scalar`` (``value`` a number); ``diagonal`` (``value`` a tensor broadcastable to the event
    shape, e.g. one rate per coordinate or per channel); ``full`` (``value`` an ``(n, n)`` matrix over the flattened
    event). ``learnable=True`` makes ``value`` an ``nn.Parameter`` (saved with the solver's weights).
    ``symmetric`` (full kind): use the eigendecomposition path; detected for fixed matrices.
    """

    def __init__(self, kind: str = "zero", value: Any = None, *, learnable: bool = False,
                 symmetric: bool | None = None) -> None:
        check_choice(kind, DRIFT_KINDS, "drift kind")
        if kind == "zero":
            tensor = torch.zeros(())
        else:
            if value is None:
                raise ConfigError(f"a {kind!r} drift matrix needs a value.")
            tensor = (value.detach().clone() if isinstance(value, torch.Tensor)
                      else torch.as_tensor(value, dtype=torch.float64))
            # fixed matrices keep float64 (exact closed forms in tests); learned ones train in float32
            tensor = tensor.to(torch.float32 if learnable else torch.float64)
            if not bool(torch.isfinite(tensor).all()):
                raise ConfigError(f"the drift matrix D must be finite, got {value!r}.")
            if kind == "scalar" and tensor.ndim != 0:
                raise ConfigError(f"a scalar drift needs a single number, got shape {tuple(tensor.shape)}.")
            if kind == "full" and (tensor.ndim != 2 or tensor.shape[0] != tensor.shape[1]):
                raise ConfigError(f"a full drift matrix must be square (n, n), got shape {tuple(tensor.shape)}.")
        if symmetric is None:
            symmetric = kind != "full" or (not learnable and bool(torch.allclose(tensor, tensor.T)))
        super().__init__(kind, learnable=learnable, symmetric=symmetric,
                         may_overflow=bool(learnable) or bool((tensor < 0).any()))
        if self.learnable:
            self.value = nn.Parameter(tensor)
        else:
            self.register_buffer("value", tensor)

    def matrix(self) -> torch.Tensor:
        return self.value

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kind": self.kind}
        if self.kind != "zero":
            cfg["value"] = self.value.detach().cpu().double().tolist()
        if self.learnable:
            cfg["learnable"] = True
        if self.kind == "full":
            cfg["symmetric"] = self.symmetric
        return cfg


def make_drift(spec: dict[str, Any] | DriftOperator | None) -> DriftOperator:
    if spec is None:
        return DriftMatrix("zero")
    if isinstance(spec, DriftOperator):
        return spec
    if not isinstance(spec, dict):
        raise ConfigError(f"drift must be a dict like {{'kind': 'diagonal', 'value': [...]}}, got {spec!r}.")
    try:
        return DriftMatrix(**spec)
    except TypeError:
        raise ConfigError(f"invalid drift matrix options {sorted(spec)}; use kind, value, learnable, "
                          "symmetric.") from None


# ============================================================================================ the process
PRIOR_KINDS = ("stationary", "marginal", "fitted")


class LinearSDE(nn.Module):
    """``dX = -beta(t) D X / 2 dt + sqrt(beta(t)) dW`` on ``[0, T]`` with its closed-form Gaussian marginals.

    ``prior`` — the law sampled at ``t = T`` by generative solvers:

    * ``"stationary"``: the invariant law ``N(0, D^{-1})`` (needs a symmetric positive-definite ``D``);
    * ``"marginal"``: ``N(0, Sigma_T)``, the law at ``T`` of the process started at the origin;
    * ``"fitted"``: the Gaussian with the moments of ``p_T`` for the training data, ``N(M_T m, M_T C M_T^T +
      Sigma_T)`` per coordinate, estimated by :meth:`fit_prior` (stored as buffers, saved with the weights);
    * a positive number ``v``: ``N(0, v I)``.
    """

    name = "linear"

    def __init__(self, schedule: dict[str, Any] | Schedule, drift: dict[str, Any] | DriftOperator | None = None, *,
                 prior: str | float = "marginal") -> None:
        super().__init__()
        self.schedule = make_schedule(schedule)
        self.D = make_drift(drift)
        self.T = self.schedule.T
        #: Smallest time used in training and as the end point of sampling, where the score blows up as Sigma -> 0.
        self.t_min = 1e-3 * self.T
        if isinstance(prior, str):
            check_choice(prior, PRIOR_KINDS, "prior")
        else:
            prior = check_positive_float(prior, "prior variance")
        self.prior = prior
        if prior == "stationary":
            self._check_stationary()

    # ---- configuration ---------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-compatible parameters that rebuild this process through :func:`make_process`."""
        return {"name": self.name, "schedule": self.schedule.config(), "drift": self.D.config(), "prior": self.prior}

    @property
    def isotropic(self) -> bool:
        """Whether ``D`` is a multiple of the identity, so that ``Sigma_t`` is a scalar times ``I``."""
        return self.D.kind in ("zero", "scalar")

    def _scalar_rate(self) -> float:
        if not self.isotropic:
            raise ConfigError(f"this quantity needs an isotropic reference; the {self.name!r} process has a "
                              f"{self.D.kind} drift matrix.")
        return 0.0 if self.D.kind == "zero" else float(self.D.matrix())

    # ---- coefficients ----------------------------------------------------------------------------------------
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.beta(t)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t) = sqrt(beta(t))``: ``G(t) = g(t) I``."""
        return self.schedule.beta(t).sqrt()

    def diffusion_at(self, t: float, device: torch.device | str = "cpu") -> float | torch.Tensor:
        """``g(t)`` at one time, as integrators take it: a float for a constant rate (``sqrt(beta)``, which is
        ``sigma`` exactly for :class:`Brownian` and :class:`OU`), else a 0-d float32 tensor on ``device``."""
        if isinstance(self.schedule, ConstantRate):
            return math.sqrt(self.schedule.value)
        return self.diffusion(torch.as_tensor(t, dtype=torch.float32, device=device))

    def g(self, t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``g(t)`` shaped to broadcast against the batch ``like``."""
        return expand_as_batch(self.diffusion(as_time(t, like)), like)

    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """Forward drift ``F(t) x = -beta(t) D x / 2``."""
        return -0.5 * expand_as_batch(self.beta(as_time(t, x)), x) * self.D.apply(x, t)

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """``c(t)`` with ``F(t) = c(t) I`` (isotropic processes only)."""
        return -0.5 * self._scalar_rate() * self.beta(t)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha(t) = int_0^t c``: ``M_t = alpha(t) I`` (isotropic processes only)."""
        return -0.5 * self._scalar_rate() * self.schedule.integral(t)

    def variance(self, t: torch.Tensor) -> torch.Tensor:
        """``Sigma_t = variance(t) I`` (isotropic processes only): ``B phi1(lambda B)``."""
        lam = self._scalar_rate()
        B = self.schedule.integral(t)
        return B * _phi1(lam * B) if lam else B

    def std(self, t: float | torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """Standard deviation of ``X_t | X_0`` per coordinate (isotropic processes), broadcast against ``like``."""
        if like is None:
            return self.variance(torch.as_tensor(t, dtype=torch.float32)).sqrt()
        return expand_as_batch(self.variance(as_time(t, like)).sqrt(), like)

    # ---- marginals -------------------------------------------------------------------------------------------
    def _transition(self, t: torch.Tensor, like: torch.Tensor) -> tuple[Any, Covariance]:
        """``(M_t, Sigma_t)`` for times ``t`` (0-d or ``(batch,)``): ``M_t`` as a factor broadcastable against
        ``like`` (zero/scalar/diagonal ``D``) or a ``(.., n, n)`` matrix (full ``D``)."""
        B = self.schedule.integral(t)
        kind = self.D.kind
        if kind == "zero":
            return None, DiagonalCovariance(expand_as_batch(B, like))
        if self.D.edges is not None:
            M, cov = self._piecewise_transition(t, B, like)
        elif kind in ("scalar", "diagonal"):
            M, cov = _diagonal_transition(self.D.matrix().to(like), expand_as_batch(B, like))
        else:
            M, cov = _full_transition(self.D.matrix().to(like), B, self.D.symmetric)
        if kind == "full":
            return M, DenseCovariance(cov, "the covariance of X_t | X_0")
        if self.D.may_overflow and not bool(torch.isfinite(cov).all() and (cov > 0).all()):
            raise NotPositiveDefiniteError("the covariance of X_t | X_0 is not positive and finite for the "
                                           "current diagonal drift D; keep D's entries above -1 / B(T).")
        return M, DiagonalCovariance(cov)

    def _piecewise_transition(self, t: torch.Tensor, B: torch.Tensor, like: torch.Tensor) -> tuple[Any, Any]:
        """``(M_t, Sigma_t)`` for a drift matrix constant on each piece ``[e_k, e_{k+1})`` of time: the exact OU
        transitions of the pieces compose, ``M <- E_k M``, ``Sigma <- E_k Sigma E_k^T + V_k`` (no commutation of
        the pieces' matrices is needed), and the last, partial piece is applied to the state at its start."""
        edges = self.D.edges.to(B)
        mats = self.D.matrices().to(like)                                  # (K, *event) or (K, n, n)
        B_edges = self.schedule.integral(edges)
        full = self.D.kind == "full"
        step = (lambda D, b: _full_transition(D, b, self.D.symmetric)) if full else _diagonal_transition
        # the exact transitions over the whole pieces, composed into the law at each edge
        M_piece, V_piece = step(mats, torch.diff(B_edges) if full else _per_piece(torch.diff(B_edges), mats))
        M_edge, V_edge = [torch.ones_like(mats[0]) if not full else torch.eye(mats.shape[-1]).to(mats)], \
            [torch.zeros_like(mats[0])]
        for k in range(mats.shape[0] - 1):
            if full:
                M_edge.append(M_piece[k] @ M_edge[-1])
                V_edge.append(M_piece[k] @ V_edge[-1] @ M_piece[k].T + V_piece[k])
            else:
                M_edge.append(M_piece[k] * M_edge[-1])
                V_edge.append(M_piece[k] ** 2 * V_edge[-1] + V_piece[k])
        k = (torch.searchsorted(edges, t.reshape(-1).contiguous(), right=True) - 1).clamp(0, mats.shape[0] - 1)
        dB = B.reshape(-1) - B_edges[k]
        M0, V0 = torch.stack(M_edge)[k], torch.stack(V_edge)[k]
        if full:
            E, V = _full_transition(mats[k], dB, self.D.symmetric)
            M, cov = E @ M0, E @ V0 @ E.transpose(-1, -2) + V
            return (M[0], cov[0]) if t.ndim == 0 else (M, cov)
        E, V = _diagonal_transition(mats[k], _per_piece(dB, mats))
        M, cov = E * M0, E**2 * V0 + V
        if t.ndim == 0:
            return M[0], cov[0]
        return M.reshape(like.shape[:1] + M.shape[1:]), cov.reshape(like.shape[:1] + cov.shape[1:])

    def covariance(self, t: float | torch.Tensor, like: torch.Tensor) -> Covariance:
        """The covariance operator ``Sigma_t`` of ``X_t | X_0`` for the batch ``like`` (without computing a mean)."""
        return self._transition(as_time(t, like), like)[1]

    def marginal(self, x0: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, Covariance]:
        """Mean ``M_t x0`` and covariance operator ``Sigma_t`` of ``X_t | X_0 = x0`` (maths.md §C.2)."""
        M, cov = self._transition(as_time(t, x0), x0)
        return self._mean(M, x0), cov

    def _mean(self, M: Any, x0: torch.Tensor) -> torch.Tensor:
        if M is None:
            return x0
        if self.D.kind == "full":
            return DenseCovariance._apply(M, x0) if M.ndim == 3 else (flat(x0) @ M.T).reshape(x0.shape)
        return M * x0

    def sample_marginal(self, x0: torch.Tensor, t: float | torch.Tensor,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``X_t ~ N(M_t x0, Sigma_t)``; returns ``(x_t, noise)`` with ``x_t = mean + L noise``."""
        mean, cov = self.marginal(x0, t)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return mean + cov.mul_sqrt(noise), noise

    def conditional_score(self, xt: torch.Tensor, x0: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``grad_x log p_{t|0}(x | x0) = -Sigma_t^{-1} (x - M_t x0)`` (the denoising score-matching target)."""
        mean, cov = self.marginal(x0, t)
        return -cov.solve(xt - mean)

    @torch.no_grad()
    def simulate(self, x0: torch.Tensor, steps: int, *, seed: int = 0) -> torch.Tensor:
        """Forward paths ``(steps + 1, n, *event)`` from ``x0`` at ``t = 0`` to ``T`` by Euler–Maruyama on a uniform
        grid (with the noise of the last step, so the end points are draws at ``T``), for plots and checks."""
        out, _ = euler_maruyama(self.drift, lambda t: self.g(t, x0), x0, time_grid(0.0, self.T, steps),
                                generator=make_generator(seed, x0.device), return_path=True, noise_last_step=True)
        return out

    def step(self, x: torch.Tensor, t: float, t_next: float, noise: torch.Tensor,
             extra: torch.Tensor | None = None,
             moments: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One step ``t -> t_next`` of ``dX = (F(t) X + h) dt + g dW`` (isotropic processes): the reference part by
        its exact Gaussian transition, ``alpha X + sqrt(v) noise`` with ``alpha = alpha(t_next) / alpha(t)`` and
        ``v = variance(t_next) - alpha^2 variance(t)``, the extra drift ``h`` (e.g. a learned policy) by an Euler
        step. Exact for ``h = 0`` at any step size, unlike Euler–Maruyama, whose variance drifts by ``O(beta dt)``.
        ``moments``: :meth:`step_moments` of this step, when the caller holds them for a fixed grid."""
        alpha, v = self.step_moments(t, t_next) if moments is None else moments
        out = alpha.to(x.dtype) * x + v.sqrt().to(x.dtype) * noise
        return out if extra is None else out + extra * (t_next - t)

    def step_moments(self, t: float, t_next: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, v)`` of the exact transition ``X_{t_next} | X_t ~ N(alpha X_t, v I)`` (isotropic processes),
        float64 scalars."""
        tt = torch.tensor([t, t_next], dtype=torch.float64)
        log_alpha, var = self.log_alpha(tt), self.variance(tt)
        alpha = torch.exp(log_alpha[1] - log_alpha[0])
        return alpha, (var[1] - alpha**2 * var[0]).clamp_min(0)

    # ---- given a score ---------------------------------------------------------------------------------------
    def reverse_drift(self, x: torch.Tensor, t: float | torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Drift of the reverse-time SDE written in forward time, ``f - g^2 score`` (maths.md §1.1)."""
        return self.drift(x, t) - self.g(t, x) ** 2 * score

    def probability_flow(self, x: torch.Tensor, t: float | torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """Probability-flow ODE velocity ``f - g^2 score / 2`` (maths.md §1.1)."""
        return self.drift(x, t) - 0.5 * self.g(t, x) ** 2 * score

    # ---- prior -----------------------------------------------------------------------------------------------
    def _check_stationary(self) -> None:
        kind = self.D.kind
        if self.D.edges is not None:
            raise ConfigError("prior='stationary' needs a drift matrix constant in time; use prior='marginal'.")
        if kind == "zero":
            raise ConfigError("prior='stationary' needs a drift pulling to the origin; this process has D = 0 (no "
                              "invariant law): use prior='marginal' or 'fitted'.")
        if kind == "full" and not self.D.symmetric:
            raise ConfigError("prior='stationary' needs a symmetric drift matrix D; use prior='marginal'.")

    def prior_moments(self, event_shape: tuple[int, ...], like: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor | None, Covariance]:
        """Mean (``None`` for 0) and covariance operator of the prior over one sample of ``event_shape``."""
        ref = torch.zeros((1, *event_shape)) if like is None else like[:1]
        if isinstance(self.prior, float):
            return None, DiagonalCovariance(torch.full((), self.prior, dtype=ref.dtype, device=ref.device))
        if self.prior == "fitted":
            if not hasattr(self, "prior_mean"):
                raise ConfigError("this process's prior is fitted to the data, but fit_prior() has not been called; "
                                  "fit the solver on data first.")
            return self.prior_mean.to(ref), DiagonalCovariance(self.prior_var.to(ref))
        if self.prior == "marginal":
            _, cov = self._transition(torch.tensor(self.T, dtype=ref.dtype, device=ref.device), ref)
            return None, cov
        self._check_stationary()
        D = self.D.matrix().to(ref)
        if self.D.kind == "full":
            lam = torch.linalg.eigvalsh(0.5 * (D + D.T))
            if not bool((lam > 0).all()):
                raise NotPositiveDefiniteError("the stationary prior N(0, D^{-1}) needs a positive-definite drift "
                                               "matrix D; keep D's eigenvalues positive or use prior='marginal'.")
            return None, DenseCovariance(torch.linalg.inv(0.5 * (D + D.T)), "the stationary prior D^{-1}")
        if not bool((D > 0).all()):
            raise NotPositiveDefiniteError("the stationary prior N(0, D^{-1}) needs positive drift rates D; keep "
                                           "them positive or use prior='marginal'.")
        return None, DiagonalCovariance(1.0 / D)

    def fit_prior(self, x0: torch.Tensor) -> None:
        """Estimate the ``fitted`` prior from data ``x0``: per coordinate, the mean and variance of ``X_T`` (the data
        mean and variance pushed through ``M_T``, plus ``Sigma_T``). A no-op for the other prior kinds."""
        if self.prior != "fitted":
            return
        x0 = x0.detach()
        M, cov = self._transition(torch.tensor(self.T, dtype=x0.dtype, device=x0.device), x0[:1])
        mean = self._mean(M, x0).mean(0)
        var = self._mean(M, x0).var(0) if x0.shape[0] > 1 else torch.zeros_like(mean)
        sigma_T = torch.diagonal(cov.dense(x0[:1])[0]).reshape(mean.shape)
        for name, value in (("prior_mean", mean), ("prior_var", var + sigma_T)):
            if hasattr(self, name):
                delattr(self, name)
            self.register_buffer(name, value.clone())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a fitted prior's buffers exist only once fitted: create them with the saved shapes before loading
        for name in ("prior_mean", "prior_var"):
            key = prefix + name
            if key in state_dict and not hasattr(self, name):
                self.register_buffer(name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw ``shape = (n, *event_shape)`` from the prior."""
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        mean, cov = self.prior_moments(tuple(shape[1:]), z)
        x = cov.mul_sqrt(z)
        return x if mean is None else x + mean

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of the prior at ``x`` (shape ``(batch,)``)."""
        mean, cov = self.prior_moments(tuple(x.shape[1:]), x)
        return cov.log_prob(x if mean is None else x - mean)

    # ---- bridges of the reference ----------------------------------------------------------------------------
    def bridge_sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``X_t`` of the reference pinned at ``X_0 = x0`` and ``X_T = x1``: ``mean + std z`` with the moments
        of :meth:`bridge_moments`."""
        mean, std = self.bridge_moments(x0, x1, t)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return mean + std * z

    def bridge_moments(self, x0: torch.Tensor, x1: torch.Tensor, t: float | torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (broadcast against ``x0``) of ``X_t`` of the reference pinned at ``X_0 = x0``
        and ``X_T = x1`` (isotropic processes; maths.md §G.1).

        With ``a_t = alpha(t)``, ``v_t = variance(t)`` and the transition ``t -> T`` of gain ``a_T / a_t`` and
        variance ``v_{T|t} = v_T - (a_T / a_t)^2 v_t``: mean ``a_t x0 + (a_T / a_t) (v_t / v_T) (x1 - a_T x0)``,
        variance ``v_t v_{T|t} / v_T``. For Brownian motion ``sigma W`` on ``[0, 1]``: ``(1 - t) x0 + t x1`` and
        ``sigma^2 t (1 - t)``.
        """
        tt = as_time(t, x0)
        T = torch.full_like(tt, self.T)
        a_t, a_T = self.log_alpha(tt).exp(), self.log_alpha(T).exp()
        v_t, v_T = self.variance(tt), self.variance(T)
        gain = a_T / a_t
        w = gain * v_t / v_T
        var = v_t * (v_T - gain**2 * v_t) / v_T
        mean = expand_as_batch(a_t, x0) * x0 + expand_as_batch(w, x0) * (x1 - expand_as_batch(a_T, x0) * x0)
        return mean, expand_as_batch(var.clamp_min(0).sqrt(), x0)


# ============================================================================================ named references
class VP(LinearSDE):
    """Variance-preserving SDE (Song et al. 2021): ``f = -beta(t) x / 2``, ``g = sqrt(beta(t))``, ``beta`` linear
    from ``beta_min`` to ``beta_max``; ``alpha^2 + Var = 1`` and the prior is ``N(0, I)``."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        super().__init__(PowerRate(beta_min, beta_max, 1.0, T), DriftMatrix("scalar", 1.0), prior="stationary")
        self.beta_min, self.beta_max = self.schedule.beta_min, self.schedule.beta_max

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T}


class VE(LinearSDE):
    """Variance-exploding SDE (Song et al. 2021): ``f = 0``, ``Var(X_t | X_0) = sigma(t)^2 - sigma_min^2`` with
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^(t/T)``; the prior is ``N(0, sigma_max^2 I)``, which covers data
    whose spread is well below ``sigma_max``."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0, T: float = 1.0) -> None:
        schedule = GeometricNoise(sigma_min, sigma_max, T)
        super().__init__(schedule, None, prior=schedule.sigma_max**2)
        self.sigma_min, self.sigma_max = schedule.sigma_min, schedule.sigma_max

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T}


class Brownian(LinearSDE):
    """Scaled Brownian motion ``dX = sigma dW`` (``sigma^2`` is the variance per unit time, maths.md §G.1), the
    reference of bridges between two data sets. Its law at ``T`` is the data blurred by ``N(0, sigma^2 T)``, so a
    generative solver's prior is ``fitted`` to those moments by default (``prior="marginal"`` gives
    ``N(0, sigma^2 T I)``, right only when ``sigma^2 T`` dwarfs the data spread)."""

    name = "brownian"

    def __init__(self, sigma: float = 1.0, T: float = 1.0, prior: str | float = "fitted") -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        super().__init__(ConstantRate(self.sigma**2, T), None, prior=prior)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "T": self.T, "prior": self.prior}


class OU(LinearSDE):
    """Ornstein–Uhlenbeck ``dX = -(sigma^2 / 2) X dt + sigma dW`` with invariant law ``N(0, I)``: the generative
    reference of DSB (maths.md §D.2, with ``f = -alpha x`` and ``alpha = sigma^2 / 2``)."""

    name = "ou"

    def __init__(self, sigma: float = 1.0, T: float = 1.0) -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        super().__init__(ConstantRate(self.sigma**2, T), DriftMatrix("scalar", 1.0), prior="stationary")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma": self.sigma, "T": self.T}


#: Processes by config name; ``linear`` is the general form (schedule + drift matrix + prior).
PROCESSES: dict[str, type[LinearSDE]] = {"vp": VP, "ve": VE, "brownian": Brownian, "ou": OU, "linear": LinearSDE}

#: The base class, under the name used before processes became modules.
Process = LinearSDE


def make_process(spec: str | dict[str, Any] | LinearSDE) -> LinearSDE:
    """Build a process from its name (``"vp"``, ``"ve"``, ``"brownian"``, ``"ou"``), a config dict (as returned by
    ``config()``), or return it unchanged."""
    if isinstance(spec, LinearSDE):
        return spec
    return _from_spec({"name": spec} if isinstance(spec, str) else spec, PROCESSES, "process")
