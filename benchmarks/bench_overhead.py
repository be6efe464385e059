"""Training throughput of sbridge's loop against a bare PyTorch loop: same networks, loss, batch and optimiser.

The model is SF2M's (two MLPs, ``sbridge.SF2M``) between two Gaussian clouds with the independent coupling, so that a
step is the networks' work and nothing else (no minibatch OT). The bare loop draws the two minibatches with
``torch.randint``, evaluates the same loss (:class:`sbridge.solvers.sf2m.ScoreFlowMatching`), and runs Adam,
gradient clipping and the EMA of the weights, as sbridge's trainer does; sbridge's loop adds what a user gets from it
(the phase machinery, the NaN check, loss logging, the learning-rate schedule, and with ``--out`` a checkpoint every
1,000 steps). sbridge's trainer asks Adam for its multi-tensor update, which torch uses by default only on GPUs, so the
bare loop is timed with torch's default and with that option. Each variant is timed ``--repeats`` times,
interleaved, in one process; the table gives the median
steps per second and the ratio to the bare loop (> 1: sbridge is slower).

Writes ``benchmarks/results/overhead.json`` and ``.md``. Run alone on the machine:
``.venv/bin/python benchmarks/bench_overhead.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import sbridge
from sbridge.solvers.sf2m import ScoreFlowMatching

RESULTS = Path(__file__).parent / "results"


def bare_loop(dim: int, x0: torch.Tensor, x1: torch.Tensor, steps: int, batch_size: int,
              foreach: bool | None = None) -> float:
    """Seconds for ``steps`` steps of a plain loop on SF2M's networks and loss (``foreach``: Adam's option; torch's
    default, ``None``, is the per-tensor loop on CPU; sbridge's trainer passes ``True``)."""
    solver = sbridge.SF2M(dim, sigma=1.0, coupling="independent", device="cpu", seed=0)
    models = solver.models
    ema = copy.deepcopy(models).requires_grad_(False)
    params = [p for m in models.values() for p in m.parameters()]
    optimiser = torch.optim.Adam(params, lr=1e-3, foreach=foreach)
    loss_fn = ScoreFlowMatching(1.0, 1e-3)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        batch = {"x0": x0[torch.randint(x0.shape[0], (batch_size,), generator=gen)],
                 "x1": x1[torch.randint(x1.shape[0], (batch_size,), generator=gen)]}
        loss, _ = loss_fn(models, batch, gen)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        with torch.no_grad():
            for p_avg, p in zip(ema.parameters(), models.parameters(), strict=True):
                p_avg.lerp_(p, 1 - 0.999)
    return time.perf_counter() - start


def sbridge_loop(dim: int, x0: torch.Tensor, x1: torch.Tensor, steps: int, batch_size: int,
                 out: str | None) -> float:
    """Seconds for ``SF2M.fit`` of ``steps`` steps (``out``: a run folder, so that checkpoints are written)."""
    solver = sbridge.SF2M(dim, sigma=1.0, coupling="independent", device="cpu", seed=0)
    start = time.perf_counter()
    solver.fit(x0, x1, steps=steps, batch_size=batch_size, quiet=True, out=out, overwrite=out is not None)
    return time.perf_counter() - start


def measure(dim: int, steps: int, batch_size: int, repeats: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(100_000, dim, generator=g), 2 + torch.randn(100_000, dim, generator=g)
    times: dict[str, list[float]] = {"bare": [], "bare, foreach Adam": [], "sbridge": [], "sbridge, checkpoints": []}
    with tempfile.TemporaryDirectory() as tmp:
        sbridge_loop(dim, x0, x1, 20, batch_size, None)  # first fit per process pays one-off set-up costs
        for _ in range(repeats):
            times["bare"].append(bare_loop(dim, x0, x1, steps, batch_size))
            times["bare, foreach Adam"].append(bare_loop(dim, x0, x1, steps, batch_size, foreach=True))
            times["sbridge"].append(sbridge_loop(dim, x0, x1, steps, batch_size, None))
            times["sbridge, checkpoints"].append(sbridge_loop(dim, x0, x1, steps, batch_size, f"{tmp}/run"))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"dim": dim, "batch_size": batch_size, "steps": steps, "repeats": repeats, "seconds": times,
            "steps_per_second": {k: steps / v for k, v in median.items()},
            "ratio_to_bare": {k: v / median["bare"] for k, v in median.items()}}


def markdown(result: dict[str, Any]) -> str:
    out = [f"# Training-loop overhead — measured on {result['machine']}", "",
           f"Command: `{result['command']}`. SF2M's two MLPs, independent coupling; median of the repeats.", "",
           "| D | batch | loop | steps / s | time ratio to the bare loop |", "|---:|---:|---|---:|---:|"]
    for row in result["rows"]:
        for name, rate in row["steps_per_second"].items():
            out.append(f"| {row['dim']} | {row['batch_size']} | {name} | {rate:.0f} | "
                       f"{row['ratio_to_bare'][name]:.3f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dims", default="2,64")
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    args = parser.parse_args()
    if args.quick:
        args.dims, args.batch_sizes, args.steps, args.repeats = "2", "64", 30, 1
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": "python benchmarks/bench_overhead.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "quick")
        + (" --quick" if args.quick else ""), "rows": []}
    for dim in [int(d) for d in args.dims.split(",")]:
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            row = measure(dim, args.steps, batch_size, args.repeats)
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
    stem = "overhead_quick" if args.quick else "overhead"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
