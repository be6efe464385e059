"""Training: the one trainer (:mod:`.trainer`), data sources (:mod:`.sources`), run folders opened for writing
(:mod:`.rundir`) and data parallelism over ``torch.distributed`` (:mod:`.distributed`)."""

from sbridge.training.sources import LoaderSource, Source, TensorSource
from sbridge.training.trainer import Phase, TrainConfig, Trainer

__all__ = ["LoaderSource", "Phase", "Source", "TensorSource", "TrainConfig", "Trainer"]
