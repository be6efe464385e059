"""Schrödinger bridges as VAEs (Kaba, Shimizu, Ohzeki & Sughiyama 2024; maths.md §A): objective = prior loss +
drift matching, with encoder early stopping.

The encode SDE ``dX = (f + g u_phi) dt + g dW`` (network ``"fwd"``) carries the data to ``p_phi(., T)``; the decode
SDE, run backward from the prior ``pi``, has the drift (in forward time, §A.1)

* ``decoder="P1"``: ``B = f + g u_phi - g^2 s_theta`` — the encoder's own drift minus a score, ``s_theta`` targets
  ``grad log p_phi``;
* ``decoder="P2"``: ``B = f - g^2 s_theta`` — SB-FBSDE's backward policy ``Z_hat = g s_theta``, which targets
  ``g grad log p_phi - u_phi``.

By the data-processing inequality the negative log-likelihood is bounded by ``H(data) + KL(P_phi || Q_theta)``
(§A.2), which splits into the **prior loss** ``KL(p_phi(., T) || pi)`` and the **drift matching**
``int E|b_rev-enc - B|^2 / (2 g^2) dt``. For any encoder an expressive decoder drives the drift matching to 0, so
the encoder is governed by the prior loss alone: once the prior loss stops improving the encoder is frozen (§A.5)
and only the decoder trains on, on paths simulated without gradients — the saving over SB-FBSDE's likelihood
training, whose forward policy trains to the end.

Training is ``stages`` phases. While the encoder trains, a step minimises the whole bound, as the exact evidence
bound of the discretised encoder / decoder pair (:class:`~sbridge.solvers.policy.PathBound`, whose continuous limit
is prior loss + drift matching): its gradient in ``theta`` is the drift matching's, and in ``phi`` it is the prior
loss's once the decoder is near its optimum (the drift matching's gradient vanishes there). After the stop the
decoder trains on its own steps of that bound (:class:`~sbridge.solvers.policy.DecoderSteps`). After every
stage the two terms are estimated on a fixed batch and logged: the prior loss along the encode SDE by the entropy
production ``-E log pi(X_T) - int E[div F + g^2 |grad log p_phi|^2 / 2] dt`` (§A.4, with the decoder's estimate of
``grad log p_phi``; it equals ``KL(p_phi(., T) || pi)`` up to the data's entropy, a constant), the drift matching as
the bound minus the prior loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sbridge.core.device import make_generator
from sbridge.core.errors import ConfigError
from sbridge.core.seeds import TERMS_STREAM, stream_seed
from sbridge.core.validation import check_choice, check_positive_int
from sbridge.losses.base import Batch, Terms
from sbridge.numerics.likelihood import elbo_grid, path_bound_terms
from sbridge.solvers.base import FitData
from sbridge.solvers.policy import DecoderSteps, PolicyBridge
from sbridge.training.trainer import Phase, TrainConfig, split_steps


class SBVAELoss:
    """One step of SB-VAE: the whole bound (:class:`~sbridge.solvers.policy.PathBound`) while the encoder trains,
    then the decoder's part of it alone (:class:`~sbridge.solvers.policy.DecoderSteps`, on encode paths simulated
    without gradients). Which one applies is read from the solver at each call (it changes at a stage end)."""

    def __init__(self, solver: SBVAE) -> None:
        self.solver = solver
        self.bound = solver.path_bound()
        self.decoder = DecoderSteps(solver.encode_drift, solver.decode_drift, solver.reference, solver._sim_times())

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        return (self.decoder if self.solver.encoder_stopped else self.bound)(models, batch, generator)


class SBVAE(PolicyBridge):
    """SB-VAE for generation from the prior of ``process``.

    ``decoder``: ``"P1"`` or ``"P2"`` (see the module docstring). ``stages``: phases of ``steps // stages`` steps,
    each followed by the estimates of the prior loss and the drift matching on ``eval_n`` data points.
    ``encoder_stop``: freeze the encoder once the prior loss has improved by less than ``stop_tol`` nats over
    ``stop_patience`` stages. ``process``, ``sim_steps``, ``divergence``, ``warm_start``: as for
    :class:`~sbridge.solvers.policy.PolicyBridge`.
    """

    method = "sbvae"
    fit_options = ("stages",)
    declared = PolicyBridge.declared.with_(prior_data=False, plots=("samples", "trajectories", "objective_terms"),
                                      diagnostics=("stage", "prior_loss", "nll_bound", "drift_matching", "encoder"))
    default_steps = 6000

    def __init__(self, dim: int | None = None, *, decoder: str = "P1", stages: int = 10, encoder_stop: bool = True,
                 stop_tol: float = 0.02, stop_patience: int = 2, eval_n: int = 1000, sim_steps: int = 20,
                 **options: Any) -> None:
        self.decoder = check_choice(decoder, ("P1", "P2"), "decoder parametrisation")
        self.set_option("stages", stages)
        if not isinstance(encoder_stop, bool):
            raise ConfigError(f"encoder_stop must be true or false, got {encoder_stop!r}.")
        self.encoder_stop = encoder_stop
        self.stop_tol = float(stop_tol)
        if isinstance(stop_tol, bool) or not (self.stop_tol >= 0 and math.isfinite(self.stop_tol)):
            raise ConfigError(f"stop_tol must be a non-negative number of nats, got {stop_tol!r}.")
        self.stop_patience = check_positive_int(stop_patience, "stop_patience")
        self.eval_n = check_positive_int(eval_n, "eval_n")
        super().__init__(dim, sim_steps=sim_steps, **options)

    def _reset_stages(self) -> None:
        #: The stage after which the encoder was frozen (0 while it trains), and the per-stage prior-loss estimates.
        self.stopped_at = torch.zeros((), dtype=torch.long)
        self.prior_losses = torch.full((self.stages,), float("nan"), dtype=torch.float64)

    def set_option(self, key: str, value: Any) -> None:
        if key == "stages":
            value = check_positive_int(value, "stages")
        super().set_option(key, value)
        if key == "stages":
            self._reset_stages()

    def options(self) -> dict[str, Any]:
        return {**super().options(), "decoder": self.decoder, "stages": self.stages, "encoder_stop": self.encoder_stop,
                "stop_tol": self.stop_tol, "stop_patience": self.stop_patience, "eval_n": self.eval_n}

    @property
    def encoder_stopped(self) -> bool:
        return int(self.stopped_at) > 0

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().extra_tensors(), "sbvae.stopped_at": self.stopped_at.clone(),
                "sbvae.prior_losses": self.prior_losses.clone()}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "sbvae.stopped_at" in tensors:
            self.stopped_at = tensors["sbvae.stopped_at"].clone()
            self.prior_losses = tensors["sbvae.prior_losses"].clone()
        super().load_extra_tensors({k: v for k, v in tensors.items() if not k.startswith("sbvae.")})

    # ---- the decoder ---------------------------------------------------------------------------------------------
    def decode_drift(self, models: Mapping[str, nn.Module], x: torch.Tensor, t: Any, cond: Any = None
                     ) -> torch.Tensor:
        """P1: ``B = f + g u - g^2 s``; P2: ``B = f - g^2 s`` (SB-FBSDE's backward policy)."""
        b = super().decode_drift(models, x, t, cond)
        if self.decoder == "P1":
            b = b + self.reference.g(t, x) * models["fwd"](x, t, cond)
        return b

    def score_estimate(self, models: Mapping[str, nn.Module], x: torch.Tensor, t: Any, cond: Any = None
                       ) -> torch.Tensor:
        """The decoder's estimate of ``grad log p_phi``: ``s`` (P1) or ``s + u / g`` (P2)."""
        s = self.decoder_score(models, x, t, cond)
        if self.decoder == "P2":
            s = s + models["fwd"](x, t, cond) / self.reference.g(t, x)
        return s

    # ---- training ------------------------------------------------------------------------------------------------
    def before_fit(self, data: FitData) -> None:
        if not self.generative:
            raise ConfigError("SB-VAE bounds the likelihood of a prior density, so it generates from noise; bridge "
                              "two data sets with SBFBSDE (mode='alternate'), DSB or DSBM.")
        self._reset_stages()
        super().before_fit(data)

    def phases(self, data: FitData, config: TrainConfig) -> list[Phase]:
        per_stage = split_steps(config.steps, self.stages, "stages")
        loss = SBVAELoss(self)
        return [Phase(f"stage{k + 1}", per_stage, loss, data.source(), lambda k=k: self._trained_in(k + 1),
                      update=lambda k=k: self._end_stage(k + 1, data), on_end=lambda k=k: self._stage_row(k + 1))
                for k in range(self.stages)]

    def _trained_in(self, stage: int) -> tuple[str, ...]:
        """The networks stage ``stage`` trains: both, or the decoder alone after the encoder's stop (read when the
        stage starts, from ``stopped_at``, which the checkpoint holds)."""
        return ("bwd",) if self.encoder_stopped and stage > int(self.stopped_at) else ("fwd", "bwd")

    def _end_stage(self, stage: int, data: FitData) -> None:
        """Estimate the two terms on a fixed batch, record the prior loss and decide whether the encoder stops."""
        x0 = data.x0[:self.eval_n]
        c = None if data.cond is None else data.cond[:self.eval_n]
        self._terms = self.objective_terms(x0, cond=c, seed=stream_seed(self.seed, TERMS_STREAM))
        self.prior_losses[stage - 1] = self._terms["prior_loss"]
        if self.encoder_stop and not self.encoder_stopped and stage > self.stop_patience:
            gain = float(self.prior_losses[stage - 1 - self.stop_patience] - self.prior_losses[stage - 1])
            if gain < self.stop_tol:
                self.stopped_at = torch.tensor(stage)
                # the decoder goes on against the encoder sampling will use: its moving average, now frozen
                self.models["fwd"].load_state_dict(self.ema_models["fwd"].state_dict())

    def _stage_row(self, stage: int) -> dict[str, Any]:
        """The stage's row: the estimated terms and the encoder's state."""
        encoder = "training" if not self.encoder_stopped else f"stopped after stage {int(self.stopped_at)}"
        return {"stage": stage, **self._terms, "encoder": encoder}

    def objective_terms(self, x: torch.Tensor, *, cond: Any = None, seed: int = 0) -> dict[str, float]:
        """Estimates (nats per sample) on the encode paths from ``x``, with the training networks:

        * ``prior_loss``: ``-E log pi(X_T) - int E[div F + g^2 |s_hat|^2 / 2] dt`` (maths.md §A.4), i.e.
          ``KL(p_phi(., T) || pi)`` plus the data's entropy, with the decoder's score estimate ``s_hat``;
        * ``nll_bound``: ``-E log pi(X_T) + int E[|F - B|^2 / (2 g^2) - div B] dt``, the negative path bound
          (:func:`sbridge.numerics.likelihood.path_elbo`), i.e. ``KL(P_phi || Q_theta)`` plus the data's entropy;
        * ``drift_matching``: their difference, the drift-matching term.
        """
        terms = path_bound_terms(lambda y, t: self.encode_drift(self.models, y, t, cond),
                                 lambda y, t: self.decode_drift(self.models, y, t, cond), self.reference, x,
                                 elbo_grid(*self._time_span(), self.sim_steps), divergence=self.divergence,
                                 generator=make_generator(seed, self.device),
                                 score=lambda y, t: self.score_estimate(self.models, y, t, cond))
        prior_loss = float((terms["prior_nll"] - terms["entropy"]).mean())
        nll_bound = float((terms["prior_nll"] + terms["drift"]).mean())
        return {"prior_loss": prior_loss, "nll_bound": nll_bound, "drift_matching": nll_bound - prior_loss}
