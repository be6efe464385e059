"""Runs: what the command line does with a run folder — the run spec (:mod:`.spec`), its data (:mod:`.datasets`),
training (:mod:`.fitting`), sampling and evaluation (:mod:`.scoring`) and plots (:mod:`.plotting`, drawn by
:mod:`.plots`). Everything here reads what a model declares (``model.capabilities()``), never its class."""

from sbridge.runs.fitting import train
from sbridge.runs.plotting import plot
from sbridge.runs.scoring import evaluate, negative_log_likelihood, sample
from sbridge.runs.spec import RunSpec

__all__ = ["RunSpec", "evaluate", "negative_log_likelihood", "plot", "sample", "train"]
