"""Benchmark: likelihoods and path bounds of every generative solver on 2-D toys (issue 11), and the wall time
SB-VAE's encoder early stopping saves against SB-FBSDE's likelihood training.

For checkerboard, 8gaussians and moons (20,000 training points, MLP 3x128, batch 512, cosine learning rate, one
seed): SGM (VP), VSDM (diagonal A), SB-FBSDE (alternating, 4 stages; and warm-started from the SGM run for 1 stage
of ``--steps / 4`` steps), SB-VAE (P2, encoder stop at 0.1 nats over 2 of 10 stages) and DSBM (generative, exact
likelihood only) are trained for ``--steps`` steps (DSBM: 4 iterations). Reported: training wall time; sample
quality (energy distance of 3,000 samples to fresh data / its noise floor) with the reverse SDE at NFE 100 and the
probability flow (Heun, 50 steps = 100 NFE); the exact NLL (probability-flow ODE, dopri5, exact divergence) and the
negative ELBO (200-step path bound) of 1,000 fresh points in nats per dimension, with standard errors. Then on
checkerboard: SB-FBSDE joint likelihood training, SB-VAE without the encoder stop and with a loose stop (1 nat over
one stage: the encoder stops after stage 2), at equal steps (``--only-stopping`` re-measures the last alone).

Writes ``benchmarks/results/likelihood.json`` and ``.md``. Run alone:
``.venv/bin/python benchmarks/bench_likelihood.py [--steps 4000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import sbridge
from sbridge import metrics
from sbridge.data import toy

RESULTS = Path(__file__).parent / "results"
SETS = ("checkerboard", "8gaussians", "moons")
NET = {"hidden": 128, "depth": 3, "seed": 0, "device": "cpu"}


WARM = Path(tempfile.mkdtemp(prefix="sbridge-bench-"))


def make(method: str, name: str = "") -> tuple[sbridge.Solver, dict[str, Any]]:
    """A solver and its extra fit options."""
    if method == "sbfbsde warm":  # backward policy from this data set's SGM row, then 1/4 of the steps at lr 2e-4
        return sbridge.SBFBSDE(2, iterations=1, sim_steps=50, warm_start=str(WARM / name), **NET), {"lr": 2e-4}
    if method == "sgm":
        return sbridge.SGM(2, **NET), {}
    if method == "vsdm":
        return sbridge.VSDM(2, stages=10, zeta=0.75, sa_lr=0.2, **NET), {}
    if method == "sbfbsde":
        return sbridge.SBFBSDE(2, iterations=4, sim_steps=50, **NET), {}
    if method == "sbfbsde joint":
        return sbridge.SBFBSDE(2, mode="joint", sim_steps=20, **NET), {}
    if method == "sbvae":
        return sbridge.SBVAE(2, decoder="P2", stages=10, sim_steps=20, stop_tol=0.1, **NET), {}
    if method == "sbvae early stop":  # a loose plateau test that stops the encoder after stage 2 of 10
        return sbridge.SBVAE(2, decoder="P2", stages=10, sim_steps=20, stop_tol=1.0, stop_patience=1, **NET), {}
    if method == "sbvae no stop":
        return sbridge.SBVAE(2, decoder="P2", stages=10, sim_steps=20, encoder_stop=False, **NET), {}
    if method == "dsbm":
        return sbridge.DSBM(2, iterations=4, **NET), {}
    raise ValueError(method)


def per_dim(logp: torch.Tensor) -> dict[str, float]:
    nats = -logp.double() / 2
    return {"nats_per_dim": float(nats.mean()), "se": float(nats.std() / math.sqrt(nats.shape[0] - 1))}


def measure(method: str, name: str, steps: int, n_eval: int) -> dict[str, Any]:
    x = toy.sample(name, 20_000, seed=0)
    ref = toy.sample(name, n_eval, seed=1)
    floor = metrics.energy_distance(toy.sample(name, n_eval, seed=2), ref)
    points = toy.sample(name, 1000, seed=3)
    model, options = make(method, name)
    steps = steps // 4 if method == "sbfbsde warm" else steps
    t = time.perf_counter()
    model.fit(x, steps=steps, batch_size=512, lr_schedule="cosine", quiet=True, **{"lr": 2e-3, **options})
    row: dict[str, Any] = {"data": name, "method": method, "steps": steps, "train_s": time.perf_counter() - t}
    if method == "sgm":
        model.save(WARM / name)
    sde = model.sample(n_eval, steps=100, seed=11)
    row["nfe_sde"] = model.last_nfe
    ode = model.sample(n_eval, steps=50, ode=True, method="heun", seed=11)
    row["nfe_ode"] = model.last_nfe
    row["energy_sde"] = metrics.energy_distance(sde, ref) / floor
    row["energy_ode"] = metrics.energy_distance(ode, ref) / floor
    t = time.perf_counter()
    row["nll"] = per_dim(model.log_prob(points))
    row["nll"]["nfe"], row["nll"]["s"] = model.last_nfe, time.perf_counter() - t
    if callable(getattr(model, "elbo", None)):
        t = time.perf_counter()
        row["bound"] = per_dim(model.elbo(points, steps=200))
        row["bound"]["s"] = time.perf_counter() - t
    stages = [r for r in model.history if "encoder" in r]
    if stages:
        stopped = [r["stage"] for r in stages if r["encoder"] != "training"]
        row["encoder_stopped_after"] = stopped[0] if stopped else None
        row["prior_loss"] = [r["prior_loss"] for r in stages]
        row["drift_matching"] = [r["drift_matching"] for r in stages]
    print(name, method, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                         if k not in ("prior_loss", "drift_matching")}, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=3000)
    parser.add_argument("--only-stopping", action="store_true",
                        help="measure only SB-VAE with an early encoder stop, added to the recorded results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.only_stopping:
        result = json.loads((RESULTS / "likelihood.json").read_text())
        result["stopping"] = [r for r in result["stopping"] if r["method"] != "sbvae early stop"]
        result["stopping"].append(measure("sbvae early stop", "checkerboard", args.steps, args.n_eval))
    else:
        rows = [measure(method, name, args.steps, args.n_eval)
                for name in SETS for method in ("sgm", "vsdm", "sbfbsde", "sbfbsde warm", "sbvae", "dsbm")]
        stopping = [measure(method, "checkerboard", args.steps, args.n_eval)
                    for method in ("sbfbsde joint", "sbvae no stop", "sbvae early stop")]
        result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch "
                             f"{torch.__version__}",
                  "command": f"python benchmarks/bench_likelihood.py --steps {args.steps} --n-eval {args.n_eval}",
                  "rows": rows, "stopping": stopping}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "likelihood.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "likelihood.md").write_text(markdown(result))
    print(markdown(result))


def _nats(r: dict | None) -> str:
    return "" if r is None else f"{r['nats_per_dim']:.3f} ± {r['se']:.3f}"


def markdown(r: dict) -> str:
    lines = [f"# Likelihoods and path bounds — measured on {r['machine']}", "",
             f"Command: `{r['command']}`. One seed; `sbfbsde warm` starts from the SGM row's weights and trains "
             "a quarter of the steps at lr 2e-4 (its time excludes the SGM's). Quality: energy distance / noise floor "
             "(1 = indistinguishable), reverse SDE at 100 NFE and probability flow (Heun, 100 NFE). NLL: exact, "
             "probability-flow ODE; "
             "-ELBO: the path-space bound on the reverse SDE's NLL (200 steps); nats per dimension on 1,000 fresh "
             "points ± standard error. Entropy of the data (the lowest NLL possible): checkerboard log(32)/2 = 1.733; "
             "8gaussians and moons have none in closed form.", "",
             "| data | method | train s | SDE | ODE | NLL | -ELBO | ODE NLL NFE |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"] + r["stopping"]:
        lines.append(f"| {x['data']} | {x['method']} | {x['train_s']:.1f} | {x['energy_sde']:.2f} | "
                     f"{x['energy_ode']:.2f} | {_nats(x['nll'])} | {_nats(x.get('bound'))} | {x['nll']['nfe']} |")
    lines += ["", "SB-VAE's encoder: stopped after stage (of 10) — "
              + "; ".join(f"{x['data']}, {x['method']}: {x.get('encoder_stopped_after')}"
                          for x in r["rows"] + r["stopping"] if "prior_loss" in x)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
