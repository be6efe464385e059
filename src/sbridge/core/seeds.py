"""Every random stream of sbridge in one table, so that no two can collide.

A model's seed ``s`` fixes everything; each use of randomness draws from its own stream of it. Two kinds:

* **offsets** — a stream seeded with ``s + k`` (the first, cheap streams of sampling and transport);
* **hashed streams** — ``stream_seed(s, STREAM, i, ...)``: a mixing hash of the seed, the stream's number and its
  indices (iteration, direction, rank, ...), for streams drawn again at every iteration, refresh or shard, where
  offsets would collide after a few iterations.

The run layer offsets the *data* seed by :data:`DATA_OFFSETS` so that evaluation draws never overlap the training
data. ``tests/test_seeds.py`` checks that the numbers of each table are distinct.
"""

from __future__ import annotations

# ---- offsets added to a model's seed ---------------------------------------------------------------------------
#: SGM / VSDM / Föllmer ``sample`` noise; a bridge's default transport noise.
SAMPLE_OFFSET = 1
#: A bridge's transport noise by default (its ``sample`` draws its prior at :data:`BRIDGE_SAMPLE_OFFSET`).
TRANSPORT_OFFSET = 1
#: The synthetic prior end (``N(0, I)`` draws) of a generative bridge.
BRIDGE_PRIOR_OFFSET = 2
#: The prior draw of a bridge's ``sample``; also the forward paths of the ``forward_backward`` plot. Given an
#: explicit seed ``s``, a bridge's ``sample`` draws its prior from ``s`` and its transport noise from
#: ``s + TRANSPORT_OFFSET``.
BRIDGE_SAMPLE_OFFSET = 3

# ---- hashed streams: stream_seed(seed, STREAM, ...) --------------------------------------------------------------
#: Per-iteration monitoring transports of a bridge (indices: iteration, direction).
MONITOR_STREAM = 10
#: DSBM's re-coupling simulations (index: iteration).
COUPLING_STREAM = 11
#: DSB's and SB-FBSDE's trajectory caches (indices: iteration, half-step; then the refresh index and rank).
CACHE_STREAM = 12
#: The training generators of shards other than shard 0 (indices: shard, step at resume).
SHARD_STREAM = 14
#: Sampling seeds of processes other than rank 0 in a distributed ``sbridge sample`` (index: rank; hashed from the
#: given seed, or the model's seed; rank 0 samples as a single process would).
SAMPLE_SHARD_STREAM = 15
#: VSDM's stochastic-approximation simulations (index: stage).
SA_STREAM = 16
#: SB-VAE's per-stage estimates of the objective's terms.
TERMS_STREAM = 17
#: Data-dependent initialisations (LightSB's mixture means drawn from the target end; index: direction).
INIT_STREAM = 18

# ---- offsets added to a run's data seed ------------------------------------------------------------------------
#: The second data set of a bridge run (so toy data and prior are independent draws).
PRIOR_DATA_OFFSET = 500
#: The evaluation reference sample.
REFERENCE_DATA_OFFSET = 1_000
#: The noise-floor sample.
FLOOR_DATA_OFFSET = 2_000

#: The hashed streams by name (distinct numbers).
HASHED_STREAMS = {"monitor": MONITOR_STREAM, "coupling": COUPLING_STREAM, "cache": CACHE_STREAM,
                  "shard": SHARD_STREAM, "sample_shard": SAMPLE_SHARD_STREAM, "sa": SA_STREAM, "terms": TERMS_STREAM,
                  "init": INIT_STREAM}
#: The offsets of a bridge's streams (distinct numbers; SGM-like solvers use only :data:`SAMPLE_OFFSET`).
BRIDGE_OFFSETS = {"transport": TRANSPORT_OFFSET, "prior": BRIDGE_PRIOR_OFFSET, "sample": BRIDGE_SAMPLE_OFFSET}
#: The data-seed offsets of a run (distinct numbers).
DATA_OFFSETS = {"prior": PRIOR_DATA_OFFSET, "reference": REFERENCE_DATA_OFFSET, "floor": FLOOR_DATA_OFFSET}


def stream_seed(seed: int, *parts: int) -> int:
    """A seed for the random stream named by ``parts`` (e.g. ``(MONITOR_STREAM, iteration, direction)``), distinct
    from every other stream of the same seed (a mixing hash, not offsets that collide after a few iterations)."""
    h = seed * 1_000_003 + 7
    for p in parts:
        h = (h * 1_000_033 + int(p) + 13) % (2**62)
    return h
