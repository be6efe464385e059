"""The registry of random streams (sbridge.core.seeds): no two streams of one table share a number, and the hashed
streams of one seed do not collide over many iterations, shards and ranks."""

from __future__ import annotations

import itertools

from sbridge.core import seeds


def test_every_table_of_streams_has_distinct_numbers() -> None:
    for table in (seeds.HASHED_STREAMS, seeds.BRIDGE_OFFSETS, seeds.DATA_OFFSETS):
        assert len(set(table.values())) == len(table), table


def test_hashed_streams_do_not_collide_over_iterations_and_ranks() -> None:
    drawn = [seeds.stream_seed(seed, stream, i, j) for seed in (0, 1, 7) for stream in seeds.HASHED_STREAMS.values()
             for i, j in itertools.product(range(40), range(4))]
    assert len(set(drawn)) == len(drawn)
    # a seed plus an offset is not the hashed stream of a neighbouring seed
    assert seeds.stream_seed(0, seeds.MONITOR_STREAM) != seeds.stream_seed(1, seeds.MONITOR_STREAM)
    assert all(0 <= s < 2**62 for s in drawn)
