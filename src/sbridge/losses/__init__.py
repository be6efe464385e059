"""Loss objects ``loss(models, batch, generator) -> (scalar, terms)`` that a user's own loop can call.

Shared ones live here (denoising score matching, reconstruction); a method's own losses live in its solver file.
"""

from sbridge.losses.base import Batch, Loss, Terms
from sbridge.losses.reconstruction import Reconstruction
from sbridge.losses.score import DenoisingScoreMatching

__all__ = ["Batch", "DenoisingScoreMatching", "Loss", "Reconstruction", "Terms"]
