"""Benchmark: the flagship demo's model, SGM (VP) on checkerboard, against the plain MLP it replaced — training time,
sampling speed, quality against NFE (SDE vs ODE, uniform / EDM / log-SNR time grids), the share of samples on the
board's empty squares, and the exact NLL of fresh data beside the checkerboard's entropy. Two seeds by default.

Quality is the energy distance of ``--n-eval`` samples to as many fresh data points, over its noise floor (the
same distance between two independent data samples). One such ratio is noisy (its floor alone varies by 2x between
draws at n = 5000), so each figure here is the mean distance of ``--repeats`` independent sample / data pairs over the
mean floor of ``2 * repeats`` data pairs: the ratio a user's ``sbridge evaluate`` gives on average.

Writes ``benchmarks/results/sgm_checkerboard.json`` and ``.md``. Run alone on an idle machine (timings are wall
clock): ``.venv/bin/python benchmarks/bench_sgm.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

import sbridge
from sbridge import metrics
from sbridge.cli import DEMO_SOLVER, DEMO_STEPS, DEMO_TRAINING
from sbridge.data import toy

RESULTS = Path(__file__).parent / "results"


#: Entropy of the checkerboard (uniform on 8 squares of side 2, area 32), in nats per dimension: the lowest NLL
#: any model can reach on fresh data (cross-entropy >= entropy).
CHECKERBOARD_ENTROPY = math.log(32.0) / 2
#: The models compared: the demo's (Fourier input features, ``DEMO_STEPS``) and the plain MLP of the earlier demo.
CONFIGS = {
    "demo": {"solver": DEMO_SOLVER, "steps": DEMO_STEPS},
    "plain": {"solver": {"process": "vp", "net": {"name": "mlp", "hidden": 128, "depth": 3}}, "steps": 8000},
}


def samplers(nfe: int, grids: tuple[str, ...] = ("uniform",)) -> list[tuple[str, dict]]:
    """(label, sample kwargs) of every sampler that spends ``nfe`` network evaluations, on each time grid."""
    out = []
    for grid in grids:
        tag = "" if grid == "uniform" else f", {grid} grid"
        out += [(f"SDE Euler-Maruyama{tag}", {"steps": nfe, "ode": False, "grid": grid}),
                (f"ODE Euler{tag}", {"steps": nfe, "ode": True, "method": "euler", "grid": grid})]
        if nfe % 2 == 0:
            out.append((f"ODE Heun{tag}", {"steps": nfe // 2, "ode": True, "method": "heun", "grid": grid}))
    return out


def empty_square_share(points: torch.Tensor) -> float:
    """The share of ``points`` off the checkerboard's 8 filled squares (on an empty square or off the board): 0 for
    the data; what a blurred picture shows as rounded squares."""
    cell = torch.floor((points + 4) / 2).long()
    on_filled = (cell.sum(1) % 2 == 0) & (points.abs() <= 4).all(1)
    return float(1 - on_filled.double().mean())


def _data(n: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(toy.sample("checkerboard", n, seed=seed), dtype=torch.float64)


def quality(model: sbridge.SGM, label: str, kw: dict[str, Any], n: int, repeats: int, floor: float) -> dict[str, Any]:
    """Mean energy distance of ``repeats`` draws of ``n`` samples to fresh data (over the mean floor), and the empty
    squares' share of all the draws."""
    distances, draws = [], []
    for r in range(repeats):
        s = model.sample(n, seed=11 + r, **kw)
        draws.append(s)
        distances.append(metrics.energy_distance(s, _data(n, 1000 + r)))
    energy = sum(distances) / repeats
    return {"sampler": label, "nfe": model.last_nfe, "energy": energy, "floor": floor, "ratio": energy / floor,
            "empty_share": empty_square_share(torch.cat(draws).double())}


def run_config(name: str, seed: int, args: argparse.Namespace, floor: float) -> dict[str, Any]:
    config = CONFIGS[name]
    steps = args.steps or config["steps"]
    x = toy.sample("checkerboard", 20_000, seed=seed)
    model = sbridge.SGM(dim=2, seed=seed, device="cpu", **config["solver"])
    t0 = time.perf_counter()
    model.fit(x, steps=steps, quiet=True, **DEMO_TRAINING)
    train_s = time.perf_counter() - t0
    out: dict[str, Any] = {"config": name, "seed": seed, "solver": config["solver"],
                           "train": {"steps": steps, **DEMO_TRAINING, "seconds": train_s,
                                     "steps_per_s": steps / train_s}}
    rows = []
    for nfe in (10, 20, 50, 100, 200):
        grids = ("uniform", "edm", "logsnr") if nfe <= 20 else ("uniform",)
        rows += [quality(model, label, kw, args.n_eval, args.repeats, floor) for label, kw in samplers(nfe, grids)]
    rows.append(quality(model, "ODE dopri5 (rtol=atol=1e-5)", {"ode": True, "method": "dopri5"}, args.n_eval,
                        args.repeats, floor))
    out["quality"] = rows
    if seed == args.seeds[0]:  # speed and likelihood once per model
        speed = []
        for nfe in (10, 100):
            for label, kw in samplers(nfe):
                model.sample(64, **kw)  # warm-up
                t = time.perf_counter()
                model.sample(args.n_speed, seed=7, **kw)
                speed.append({"sampler": label, "nfe": model.last_nfe,
                              "samples_per_s": args.n_speed / (time.perf_counter() - t)})
        out["sampling_speed"] = speed
        points = toy.sample("checkerboard", args.n_nll, seed=3000)
        t = time.perf_counter()
        nats = -model.log_prob(points).double() / 2
        out["nll"] = {"n": args.n_nll, "nats_per_dim": float(nats.mean()),
                      "se": float(nats.std() / math.sqrt(args.n_nll)), "entropy": CHECKERBOARD_ENTROPY,
                      "nfe": model.last_nfe, "seconds": time.perf_counter() - t}
    print(json.dumps({k: out[k] for k in ("config", "seed", "train")}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="demo,plain", help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: each config's)")
    parser.add_argument("--n-eval", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--n-speed", type=int, default=10000)
    parser.add_argument("--n-nll", type=int, default=2000)
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    floors = [metrics.energy_distance(_data(args.n_eval, 2000 + k), _data(args.n_eval, 3000 + k))
              for k in range(2 * args.repeats)]
    floor = sum(floors) / len(floors)
    runs = [run_config(name, seed, args, floor) for name in args.configs.split(",") for seed in args.seeds]
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": "python benchmarks/bench_sgm.py " + " ".join(
            f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None),
        "n_eval": args.n_eval, "repeats": args.repeats,
        "floor": {"mean": floor, "min": min(floors), "max": max(floors), "pairs": len(floors)},
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sgm_checkerboard.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "sgm_checkerboard.md").write_text(markdown(result))
    print(markdown(result))


def _model_name(run: dict[str, Any]) -> str:
    net = run["solver"]["net"]
    bands = f", Fourier features x{net['fourier_bands']}" if net.get("fourier_bands") else ""
    return f"{run['config']}: MLP {net['depth']}x{net['hidden']}{bands}, {run['train']['steps']:,} steps"


def markdown(r: dict[str, Any]) -> str:
    fl = r["floor"]
    lines = [f"# SGM (VP) on checkerboard — measured on {r['machine']}", "", f"Command: `{r['command']}`.", "",
             "## Training", "", "| model | seed | seconds | steps/s |", "|---|---:|---:|---:|"]
    lines += [f"| {_model_name(run)} | {run['seed']} | {run['train']['seconds']:.1f} | "
              f"{run['train']['steps_per_s']:.0f} |" for run in r["runs"]]
    lines += ["", "## Quality against NFE", "",
              f"Energy distance of {r['n_eval']:,} samples to as many fresh data points, mean of {r['repeats']} "
              "independent draws, over the mean noise floor of "
              f"{fl['pairs']} pairs of data samples ({fl['mean']:.5f}; single pairs ranged {fl['min']:.5f}–"
              f"{fl['max']:.5f}): ratio 1 = as close to the data as the data is to itself. Empty: the share of samples "
              "on the board's empty squares or off it (data: 0).", ""]
    models = sorted({run["config"] for run in r["runs"]}, key=list(CONFIGS).index)
    seeds = sorted({run["seed"] for run in r["runs"]})
    header = "| sampler | NFE | " + " | ".join(f"{m} s{s} ratio | {m} s{s} empty" for m in models for s in seeds)
    lines += [header + " |", "|---|---:|" + "---:|" * (2 * len(models) * len(seeds))]
    by = {(run["config"], run["seed"]): run for run in r["runs"]}
    first = by[(models[0], seeds[0])]["quality"]
    for i, q in enumerate(first):
        cells = []
        for m in models:
            for s in seeds:
                row = by[(m, s)]["quality"][i]
                cells += [f"{row['ratio']:.2f}", f"{100 * row['empty_share']:.1f} %"]
        lines.append(f"| {q['sampler']} | {q['nfe']} | " + " | ".join(cells) + " |")
    lines += ["", "## Sampling speed and likelihood (first seed)", ""]
    for m in models:
        run = by[(m, seeds[0])]
        lines += [f"{_model_name(run)}:", "", "| sampler | NFE | samples/s |", "|---|---:|---:|"]
        lines += [f"| {s['sampler']} | {s['nfe']} | {s['samples_per_s']:,.0f} |" for s in run["sampling_speed"]]
        nll = run["nll"]
        lines += ["", f"Exact NLL of {nll['n']} fresh points (probability-flow ODE, dopri5 at rtol = atol = 1e-5, "
                  f"exact divergence, {nll['nfe']} network evaluations, {nll['seconds']:.1f} s): "
                  f"**{nll['nats_per_dim']:.3f} ± {nll['se']:.3f} nats/dim**; the checkerboard's entropy, the lowest "
                  f"reachable, is {nll['entropy']:.3f} nats/dim.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
