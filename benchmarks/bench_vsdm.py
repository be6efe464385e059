"""Benchmark: VSDM vs SGM on anisotropic 2-D sets (math.md §C.7) — quality against NFE (SDE and ODE), straightness
of the probability-flow paths, training wall time.

Data: spiral stretched 8x on y, checkerboard stretched 6x on x. Both solvers use beta_max = 10 (under which SGM
leaves the stretched axis under-noised), the MLP 3x128, 4,000 steps of batch 512 with a cosine learning rate; VSDM
runs 10 stages with zeta = 0.75 and a diagonal A. Quality: energy distance of 3,000 samples to fresh data divided
by its noise floor (two independent data samples). Writes ``benchmarks/results/vsdm.json`` and ``.md``. Run alone:
``.venv/bin/python benchmarks/bench_vsdm.py [--steps 4000]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import sbridge
from sbridge import metrics
from sbridge.data import toy

RESULTS = Path(__file__).parent / "results"
SETS = {"spiral x8 on y": ("spiral", (1.0, 8.0)), "checkerboard x6 on x": ("checkerboard", (6.0, 1.0))}
NFES = (6, 10, 25, 50, 100)


def make(method: str) -> sbridge.Solver:
    if method == "sgm":
        return sbridge.SGM(2, process={"name": "vp", "beta_max": 10.0}, hidden=128, depth=3, seed=0, device="cpu")
    return sbridge.VSDM(2, beta_max=10.0, stages=10, zeta=0.75, sa_lr=0.2, hidden=128, depth=3, seed=0,
                        device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=3000)
    args = parser.parse_args()
    rows = []
    for label, (name, scale) in SETS.items():
        x = toy.sample(name, 20_000, seed=0, scale=scale)
        ref = toy.sample(name, args.n_eval, seed=1, scale=scale)
        floor = metrics.energy_distance(toy.sample(name, args.n_eval, seed=2, scale=scale), ref)
        for method in ("sgm", "vsdm"):
            model = make(method)
            t = time.perf_counter()
            model.fit(x, steps=args.steps, batch_size=512, lr=2e-3, lr_schedule="cosine", quiet=True)
            seconds = time.perf_counter() - t
            row = {"data": label, "method": method, "train_s": seconds, "floor": floor, "quality": {}}
            for nfe in NFES:
                sde = model.sample(args.n_eval, steps=nfe, seed=11)
                ode = model.sample(args.n_eval, steps=nfe, ode=True, method="euler", seed=11)
                row["quality"][str(nfe)] = {"sde": metrics.energy_distance(sde, ref) / floor,
                                            "ode": metrics.energy_distance(ode, ref) / floor}
            paths = model.sample(1000, steps=100, ode=True, method="euler", return_path=True, seed=12)
            row["straightness"] = metrics.path_straightness(paths)
            row["kinetic_energy"] = metrics.kinetic_energy(paths)
            if method == "vsdm":
                row["A"] = model.A.tolist()
            rows.append(row)
            print(label, method, {k: round(v["ode"], 2) for k, v in row["quality"].items()}, flush=True)
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "command": f"python benchmarks/bench_vsdm.py --steps {args.steps} --n-eval {args.n_eval}",
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vsdm.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "vsdm.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [f"# VSDM vs SGM on anisotropic sets — measured on {r['machine']}", "",
             f"Command: `{r['command']}`. Energy distance to fresh data / noise floor (1 = indistinguishable); "
             "samplers: Euler-Maruyama (SDE) and Euler on the probability flow (ODE), NFE = steps. Straightness: "
             "chord / arc length of 100-step ODE paths (1 = straight).", "",
             "| data | method | " + " | ".join(f"NFE {n} SDE / ODE" for n in NFES)
             + " | straightness | kinetic energy | train s |",
             "|---|---|" + "---:|" * (len(NFES) + 3)]
    for row in r["rows"]:
        cells = [f"{row['quality'][str(n)]['sde']:.2f} / {row['quality'][str(n)]['ode']:.2f}" for n in NFES]
        lines.append(f"| {row['data']} | {row['method']} | " + " | ".join(cells)
                     + f" | {row['straightness']:.3f} | {row['kinetic_energy']:.1f} | {row['train_s']:.1f} |")
    lines += ["", "VSDM's learned diagonal A per data set: "
              + "; ".join(f"{row['data']}: {[round(a, 3) for a in row['A']]}" for row in r["rows"] if "A" in row)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
