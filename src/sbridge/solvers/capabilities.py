"""What a fitted solver can do, declared by the solver itself.

Runs, evaluation, plots and the command line read a solver's :class:`Capabilities` record (``solver.capabilities()``)
and nothing else: no method names, log keys, attribute probes or signatures. A solver builds its record from its
class's declaration (:attr:`Solver.declared <sbridge.solvers.base.Solver.declared>`) and from how it was built and
fitted (a bridge fitted between two data sets no longer samples from a prior; Föllmer's case F has no ODE). An
undeclared capability raises :class:`CapabilityError` with one sentence, so the record and the methods cannot
disagree silently (``tests/test_capabilities.py`` calls every declared capability of every solver in every mode and
checks that every undeclared one raises).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sbridge.core.errors import ConfigError
from sbridge.core.validation import check_nonnegative_float

#: Time grids a sampler may be asked for (``sample(..., grid=...)``; :func:`~sbridge.numerics.integrators.make_grid`).
GRIDS = ("uniform", "edm", "logsnr")
#: Plot kinds a solver may declare; :mod:`sbridge.runs.plotting` draws each.
PLOT_KINDS = ("samples", "trajectories", "loss", "iterations", "variational", "forward_backward", "objective_terms",
              "transport", "reconstructions", "interpolations")


class CapabilityError(ConfigError):
    """A solver was asked for something it does not do (in the mode it was fitted in)."""


@dataclass(frozen=True)
class Capabilities:
    """A solver's declared abilities after its fit.

    ``sample``: ``sample(n)`` draws new points of the data end from noise.
    ``transport``: ``transport(x)`` pushes points of the data end to the other end, and ``transport(x,
    reverse=True)`` back. ``two_sets``: it was fitted between two data sets (``fit(x, prior=y)``), so transport is its
    output and it has no prior of its own. ``prior_data``: ``fit`` accepts a second data set.
    ``log_prob``: exact log-likelihood of data points (nats). ``path_bound``: ``elbo(x)``, a path-space lower bound.
    ``likelihood_space``: ``"data"``, or ``"latent"`` for a density of latent codes.
    ``cond``: the condition kind it was built for (``"label"``, ``"vector"``) or ``None``; ``cond_required``: every
    call needs one (no "no condition" mode); ``guidance``: classifier-free guidance (``guidance=`` of ``sample``).
    ``samplers``: ``"sde"`` (``ode=False``) and/or ``"ode"`` (``ode=True``); ``grids``: the time grids ``sample``
    takes; ``fixed_steps``: the only step count its sampler runs (``None``: any).
    ``exact_plan``: ``transport(x)`` without steps draws the learned conditional plan exactly, and
    ``plan_log_prob(x, y)`` gives its density. ``closed_form``: fitted without training steps. ``codec``: ``encode``
    / ``decode`` and an ``autoencoder_run`` with ``reconstruct`` (an autoencoder, or a latent run's first stage).
    ``latent``: a latent composition (``LatentBridge``); ``latent_solver``: may be the solver of one.
    ``plots``: the plot kinds it draws (:data:`PLOT_KINDS`, in drawing order); ``diagnostics``: the keys of the rows
    its phases add when they end (``history``, and ``metrics.jsonl``: what its own plots read).
    """

    sample: bool = False
    transport: bool = False
    two_sets: bool = False
    prior_data: bool = False
    log_prob: bool = False
    path_bound: bool = False
    likelihood_space: str = "data"
    cond: str | None = None
    cond_required: bool = False
    guidance: bool = False
    samplers: tuple[str, ...] = ()
    grids: tuple[str, ...] = ()
    fixed_steps: int | None = None
    exact_plan: bool = False
    closed_form: bool = False
    codec: bool = False
    latent: bool = False
    latent_solver: bool = False
    plots: tuple[str, ...] = ()
    diagnostics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [k for k in self.plots if k not in PLOT_KINDS]
        if unknown:
            raise ValueError(f"unknown plot kinds {unknown}; known: {PLOT_KINDS}")

    def with_(self, **changes: Any) -> Capabilities:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> str:
        """The abilities in a few words, for error messages: ``samples (sde, ode), log_prob``."""
        parts = []
        if self.sample:
            parts.append(f"sample ({', '.join(self.samplers)})")
        if self.transport:
            parts.append("transport" + (" between its two data sets" if self.two_sets else ""))
        if self.log_prob:
            parts.append("log_prob")
        if self.path_bound:
            parts.append("elbo")
        if self.codec:
            parts.append("encode/decode")
        return ", ".join(parts) or "nothing beyond its training"


def refuse(what: str, name: str, caps: Capabilities, hint: str = "") -> CapabilityError:
    """The one sentence for an undeclared capability: ``name`` (a solver or run) does not ``what``."""
    return CapabilityError(f"{name} does not {what}" + (f" ({hint})" if hint else "")
                           + f"; what it does: {caps.summary()}.")


class Declared:
    """What every model (a solver, a latent composition) has: its record, its name, and the capability methods,
    which raise one sentence unless the record declares them (a model that declares one overrides its method)."""

    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The model's name in messages and plot titles."""
        raise NotImplementedError

    def _require(self, ability: str, what: str, hint: str = "") -> None:
        """Raise the one sentence of :func:`refuse` unless ``ability`` (a field of :class:`Capabilities`) is
        declared."""
        caps = self.capabilities()
        if not getattr(caps, ability):
            raise refuse(what, f"this {self.label} model", caps, hint)

    def check_guidance(self, guidance: Any) -> float:
        """``guidance`` as a weight ``w >= 0``; a nonzero weight is refused (with the reason) unless the record
        declares ``guidance``."""
        w = check_nonnegative_float(guidance, "guidance")
        if w:
            self._require("guidance", "apply classifier-free guidance", self._guidance_hint())
        return w

    def _guidance_hint(self) -> str:
        """Why guidance is missing, when the model knows (e.g. trained without condition dropout)."""
        return ""

    def sample(self, n: int, **kwargs: Any) -> Any:
        """Draw ``n`` new points of the data end (models that declare ``sample`` implement it)."""
        self._require("sample", "draw samples from noise")
        raise NotImplementedError

    def transport(self, x: Any, **kwargs: Any) -> Any:
        """Push points of one end to the other (models that declare ``transport`` implement it)."""
        self._require("transport", "transport points between two ends")
        raise NotImplementedError

    def log_prob(self, x: Any, **kwargs: Any) -> Any:
        """Exact log-likelihood (models that declare ``log_prob`` implement it)."""
        self._require("log_prob", "give exact likelihoods")
        raise NotImplementedError

    def plan_log_prob(self, x: Any, y: Any, **kwargs: Any) -> Any:
        """``log pi(y | x)`` of the learned conditional plan (models that declare ``exact_plan`` implement it)."""
        self._require("exact_plan", "give the density of a conditional plan")
        raise NotImplementedError

    def elbo(self, x: Any, **kwargs: Any) -> Any:
        """Path-space lower bound on the log-likelihood (models that declare ``path_bound`` implement it)."""
        self._require("path_bound", "define a path-space likelihood bound")
        raise NotImplementedError
