"""Loss objects shared by several solvers, usable from a hand-written training loop (torchcfm's model).

A loss is called as ``loss(models, batch, generator) -> (scalar, terms)``: ``models`` maps names to modules,
``batch`` is a dict of tensors (``x``, optionally ``cond``), every random draw goes through ``generator``, and
``terms`` are detached scalars logged beside the loss. Method-specific losses live in their solver's module
(DSB's mean matching, DSBM's bridge matching).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sbridge.core.tensors import sum_event
from sbridge.core.validation import check_probability
from sbridge.losses.base import Batch, Terms
from sbridge.nets.embeddings import drop_condition
from sbridge.processes.linear import LinearSDE


class DenoisingScoreMatching:
    """Noise-prediction denoising score matching (Vincent 2011; Ho et al. 2020; maths.md §A.3, §D.1).

    Draw ``t ~ U[t_min, T]`` and ``X_t = M_t X_0 + L_t eps`` from the closed-form marginal of ``process``; the model
    ``models[model](X_t, t, cond)`` predicts ``eps`` and the loss is ``E ||eps_theta - eps||^2`` summed over the
    event, i.e. denoising score matching of ``score = -L_t^{-T} eps_theta`` with weight ``Sigma_t`` (``std^2`` for
    an isotropic reference). ``cond_drop``: probability of replacing a sample's condition by "none" during training
    (classifier-free guidance, Ho & Salimans 2022).
    """

    def __init__(self, process: LinearSDE, model: str = "score", cond_drop: float = 0.0) -> None:
        self.process, self.model = process, model
        self.cond_drop = check_probability(cond_drop, "cond_drop")

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch,
                 generator: torch.Generator) -> tuple[torch.Tensor, Terms]:
        proc, x0 = self.process, batch["x"]
        n = x0.shape[0]
        t = proc.t_min + (proc.T - proc.t_min) * torch.rand(n, generator=generator, device=x0.device)
        xt, eps = proc.sample_marginal(x0, t, generator)
        cond = batch.get("cond")
        if cond is not None and self.cond_drop > 0:
            drop = torch.rand(n, generator=generator, device=x0.device) < self.cond_drop
            cond = drop_condition(cond, drop)
        loss = sum_event((models[self.model](xt, t, cond) - eps) ** 2).mean()
        return loss, {}
