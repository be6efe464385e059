"""Metrics, each reported beside its noise floor: sample distances, Gaussian-fit errors and path measures
(:mod:`.samples`); classifier Fréchet distance and KID for images (:mod:`.images`, imported on demand)."""

from sbridge.metrics.samples import (
    bw2_uvp,
    cbw2_uvp,
    cbw2_uvp_from_moments,
    energy_distance,
    evaluate,
    gaussian_fit_kl,
    gaussian_fit_kl_bias,
    kinetic_energy,
    mmd,
    path_straightness,
    sliced_w2,
    straightness_gap,
    w2,
)

__all__ = ["bw2_uvp", "cbw2_uvp", "cbw2_uvp_from_moments", "energy_distance", "evaluate", "gaussian_fit_kl",
           "gaussian_fit_kl_bias", "kinetic_energy", "mmd",
           "path_straightness", "sliced_w2", "straightness_gap", "w2"]
