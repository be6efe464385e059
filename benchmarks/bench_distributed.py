"""Benchmark: one process vs two data-parallel processes (torch.distributed, gloo) on this machine.

Measures, for SGM (VP) on checkerboard with the MLP 3x128 at a global batch of 512: training steps/s of one
process (2 torch threads, and 1 thread), of one process drawing the batch in two shards (the accumulation cost of
the distributed path), and of two processes with 1 thread each; sampling samples/s (``runs.sample``'s sharded draw);
and DSBM's re-coupling simulation (24,576 points, 50 Euler-Maruyama steps) shared over the processes.

Writes ``benchmarks/results/distributed.json`` and ``.md``. Run alone on an idle machine:
``.venv/bin/python benchmarks/bench_distributed.py [--steps 1500]``. Processes are started by
``torch.multiprocessing`` with a ``file://`` rendezvous (no ports).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sbridge
from sbridge import runs
from sbridge.data import toy

RESULTS = Path(__file__).parent / "results"
NET = {"name": "mlp", "hidden": 128, "depth": 3}


def train_rate(steps: int, out: Path, shards: int = 0) -> float:
    """Training steps/s of SGM on checkerboard at global batch 512 (after 50 warm-up steps in another fit)."""
    x = toy.sample("checkerboard", 20_000, seed=0)
    sbridge.SGM(2, net=NET, seed=0, device="cpu").fit(x, steps=50, batch_size=512, quiet=True, shards=shards)
    model = sbridge.SGM(2, net=NET, seed=0, device="cpu")
    t = time.perf_counter()
    model.fit(x, steps=steps, batch_size=512, lr=2e-3, quiet=True, shards=shards, out=out, checkpoint_every=10**9)
    return steps / (time.perf_counter() - t)


def sample_rate(run: Path, n: int) -> float:
    runs.sample(run, 256, steps=100)  # warm-up
    t = time.perf_counter()
    runs.sample(run, n, steps=100)
    return n / (time.perf_counter() - t)


def coupling_seconds() -> float:
    """Wall time of one DSBM re-coupling of 24,576 points (three chunks of 8,192), 50 steps."""
    x = toy.sample("moons", 24_576, seed=0)
    model = sbridge.DSBM(2, net=NET, sim_steps=50, seed=0, device="cpu")
    model._chunked_transport(x[:256], None, reverse=False, seed=1)  # warm-up
    t = time.perf_counter()
    model._chunked_transport(x, None, reverse=False, seed=1)
    return time.perf_counter() - t


def measure(steps: int, n_sample: int, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    rate = train_rate(steps, out / "run")
    return {"train_steps_per_s": rate, "sample_per_s": sample_rate(out / "run", n_sample),
            "coupling_s": coupling_seconds()}


def _worker(rank: int, world: int, init_file: str, steps: int, n_sample: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = measure(steps, n_sample, Path(out))
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out, "two.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--n-sample", type=int, default=20_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sbridge_bench_dist_"))
    rows = {}
    threads = torch.get_num_threads()
    rows["one process, 2 threads"] = measure(args.steps, args.n_sample, work / "one2")
    torch.set_num_threads(1)
    rows["one process, 1 thread"] = measure(args.steps, args.n_sample, work / "one1")
    rows["one process, 1 thread, 2 shards"] = {"train_steps_per_s": train_rate(args.steps, work / "shards2",
                                                                               shards=2)}
    torch.set_num_threads(threads)
    init = work / "rendezvous"
    mp.spawn(_worker, args=(2, str(init), args.steps, args.n_sample, str(work / "two")), nprocs=2, join=True)
    rows["two processes, 1 thread each"] = json.loads((work / "two" / "two.json").read_text())
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": f"python benchmarks/bench_distributed.py --steps {args.steps} --n-sample {args.n_sample}",
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distributed.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "distributed.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    base = r["rows"]["one process, 2 threads"]
    lines = [f"# One vs two data-parallel processes — measured on {r['machine']}", "",
             f"Command: `{r['command']}`. SGM (VP) on checkerboard, MLP 3x128, global batch 512; sampling "
             "100 Euler-Maruyama steps; DSBM re-coupling of 24,576 points in 50 steps. Ratios are to one process "
             "with 2 threads, measured in the same run.", "",
             "| setting | train steps/s | ratio | samples/s | ratio | coupling s | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in r["rows"].items():
        cells = [f"{row['train_steps_per_s']:.0f}", f"{row['train_steps_per_s'] / base['train_steps_per_s']:.2f}"]
        if "sample_per_s" in row:
            cells += [f"{row['sample_per_s']:,.0f}", f"{row['sample_per_s'] / base['sample_per_s']:.2f}",
                      f"{row['coupling_s']:.2f}", f"{base['coupling_s'] / row['coupling_s']:.2f}"]
        else:
            cells += ["", "", "", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
