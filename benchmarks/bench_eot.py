"""The entropic-OT benchmark (maths.md §H) in every published cell: LightSB (and the other bridges) against the known
plan, each figure beside its oracle floor and the published one.

Cells: D in {2, 16, 64, 128} x eps in {0.1, 1, 10} (``--dims``, ``--eps``). Per cell, from ``EOTBenchmark(D, eps,
seed=0)``: ``--n-train`` independent draws of each end for training; ``--n-inputs`` fixed test inputs with
``--per-input`` model draws each for cBW2-UVP (maths.md §H.3) and 10,000 transported points for BW2-UVP. Floors:

* ``floor``: the true plan sampled the same way (``per_input`` exact draws per input): what any sampler of the
  right plan scores with this many draws;
* ``sde floor``: the true drift (the benchmark's own potential, :meth:`MixturePotential.from_gaussian_potential`)
  integrated by the same SDE sampler (``--sde-steps``, ``--sde-per-input`` draws per input): what a perfect drift
  scores through that discretisation with that many draws.

LightSB rows give cBW2-UVP of its exact plan draws, the same from the learned moments in closed form (``exact``: no
sampling error, compare with 0), and through the SDE on its closed-form drift. Published figures (cBW2-UVP %,
Gushchin et al. 2023 benchmark, as reported by the LightSB paper, Korotin et al. ICLR 2024, Table 2) are on the
published pairs, not ours: same construction, other draws (§H.2). The neural bridges (``--methods sf2m,dsbm,...``;
``name:variant`` picks SF2M's coupling or DSBM's start) are scored through the SDE (their ``transport``, ``--sde-steps``
steps, DSB on its own grid), against ``sde floor``; ``finite`` says whether every draw was finite.

``--family isotropic`` runs the same cells on pairs of the kind the published files hold (isotropic covariances,
grid means; ``EOTBenchmark(family="isotropic")``, maths.md §H.2), written to ``eot_isotropic.*``: the like-for-like
comparison with the published figures. Writes ``benchmarks/results/eot.json`` and ``.md``. Run alone on the
machine (wall-clock times): ``.venv/bin/python benchmarks/bench_eot.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sbridge
from sbridge import metrics
from sbridge.data.eot_benchmark import EOTBenchmark
from sbridge.solvers.lightsb import MixturePotential

try:  # run as a script (benchmarks/ on the path) or imported from the repository root
    import peer_torchcfm
except ImportError:
    from benchmarks import peer_torchcfm

RESULTS = Path(__file__).parent / "results"
#: cBW2-UVP (%) of LightSB on the published pairs: {(D, eps): value} (LightSB paper, Table 2).
PUBLISHED_LIGHTSB = {(2, 0.1): 0.03, (2, 1.0): 0.05, (2, 10.0): 0.07, (16, 0.1): 0.08, (16, 1.0): 0.09,
                     (16, 10.0): 0.11, (64, 0.1): 0.28, (64, 1.0): 0.24, (64, 10.0): 0.21, (128, 0.1): 0.60,
                     (128, 1.0): 0.62, (128, 10.0): 0.37}
#: cBW2-UVP (%) of bridge matching (BM^2, the best published neural bridge) at eps = 1, as quoted in issue 19 from
#: the LightSB-M paper (Gushchin et al. 2024): {D: value}. Shown on the DSBM rows.
PUBLISHED_BM2 = {2: 0.14, 16: 0.41, 64: 1.72, 128: 8.3}


#: The solvers a method name builds; "name:variant" passes the variant to the option named here.
SOLVERS = {"lightsb": ("LightSB", None), "sf2m": ("SF2M", "coupling"), "dsbm": ("DSBM", "start"),
           "dsb": ("DSB", None), "sbfbsde": ("SBFBSDE", None), "gaussiansb": ("GaussianSB", None)}
#: Settings recorded per row (those the solver has).
RECORDED = ("components", "covariance", "rank", "directions", "coupling", "start", "iterations", "hidden", "depth",
            "steps", "batch_size", "lr", "lr_schedule", "ema_decay", "grad_clip")


def _fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training options given on the command line (the solver's defaults for the others)."""
    return {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}.items()
            if v is not None}


def settings(method: str, args: argparse.Namespace) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(sbridge class name, constructor options, fit options) of ``method`` ("name" or "name:variant")."""
    name, _, variant = method.partition(":")
    if name == "torchcfm":  # the peer: torchcfm's SF2M (peer_torchcfm), ot_method as the variant
        if not peer_torchcfm.available():
            raise SystemExit("method 'torchcfm' needs the bench-only peer: run `make bench-peers` first.")
        fit = _fit_options(args)
        return "torchcfm", {"ot_method": variant or "exact"}, fit
    if name not in SOLVERS:
        raise SystemExit(f"unknown method {method!r}; choose from {', '.join(SOLVERS)} (optionally name:variant).")
    cls, variant_option = SOLVERS[name]
    build: dict[str, Any] = {}
    if variant:
        if variant_option is None:
            raise SystemExit(f"method {name!r} has no variants; got {method!r}.")
        build[variant_option] = variant
    if name == "lightsb":
        build.update({k: v for k, v in {"components": args.components, "covariance": args.covariance,
                                        "rank": args.rank}.items() if v is not None})
        build["directions"] = "forward"  # only pi(x1 | x0) is scored
    elif name != "gaussiansb":
        build.update({k: v for k, v in {"hidden": args.hidden, "depth": args.depth}.items() if v is not None})
        if args.net is not None:
            build["net"] = json.loads(args.net)
    fit = _fit_options(args)
    fit["quiet"] = True
    return cls, build, fit


def _exact_cbw(potential: MixturePotential, inputs: torch.Tensor, true_mean: torch.Tensor, true_cov: torch.Tensor,
               var: float) -> float:
    """cBW2-UVP from the learned plan's closed-form conditional moments (no Monte-Carlo error)."""
    with torch.no_grad():
        mean, cov = potential.plan_moments(inputs.to(potential.r))
    return metrics.cbw2_uvp_from_moments(mean, cov, true_mean, true_cov, var)


def cell(dim: int, eps: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    bench = EOTBenchmark(dim=dim, eps=eps, seed=0, family=args.family)
    g = torch.Generator().manual_seed(1)
    x0, x1 = bench.sample_x0(args.n_train, generator=g), bench.sample_x1(args.n_train, generator=g)
    inputs = bench.test_inputs(args.n_inputs, seed=2)
    true_mean, true_cov = bench.conditional_moments(inputs)
    var = bench.x1_var()
    k = args.per_input
    repeated = inputs.repeat_interleave(k, 0)
    floor = metrics.cbw2_uvp(bench.sample_conditional(inputs, k, generator=g), true_mean, true_cov, var)
    target = bench.sample_x1(10_000, generator=g)
    bw_floor = metrics.bw2_uvp(bench.sample_x1(10_000, generator=g), target)
    oracle = sbridge.LightSB(dim, sigma=bench.sigma, components=bench.potential_weights.shape[0],
                             covariance="full", device="cpu")
    state = MixturePotential.from_gaussian_potential(bench.potential_weights, bench.potential_means,
                                                     bench.potential_covs, eps).state_dict()
    oracle.ema_models["fwd"].load_state_dict(state)
    k_sde = args.sde_per_input
    repeated_sde = inputs.repeat_interleave(k_sde, 0)
    sde_floor = metrics.cbw2_uvp(oracle.transport(repeated_sde, steps=args.sde_steps).reshape(-1, k_sde, dim),
                                 true_mean, true_cov, var)
    # the estimator's own bias with k_sde draws: the true plan sampled exactly k_sde times (own generator, so that
    # the other draws stay those of earlier runs)
    draw_floor = metrics.cbw2_uvp(bench.sample_conditional(inputs, k_sde, generator=torch.Generator().manual_seed(5)),
                                  true_mean, true_cov, var)
    base = {"dim": dim, "eps": eps, "family": args.family, "floor": floor, "sde_floor": sde_floor,
            "sde_draw_floor": draw_floor,
            "bw2_uvp_floor": bw_floor, "published_lightsb": PUBLISHED_LIGHTSB.get((dim, eps)),
            "published_bm2": PUBLISHED_BM2.get(dim) if eps == 1.0 else None}
    rows = []
    for method in args.methods.split(","):
        cls, build, fit = settings(method, args)
        start = time.perf_counter()
        if cls == "torchcfm":
            np.random.seed(args.solver_seed)  # torchcfm draws its pairs with numpy's and its times with torch's
            torch.manual_seed(args.solver_seed)  # global generators
            solver = peer_torchcfm.fit_sf2m(x0, x1, bench.sigma, seed=args.solver_seed, **build, **fit)
            recorded = {"peer": f"torchcfm {peer_torchcfm.version()}", **build, **fit}
        else:
            reference = ({"process": {"name": "brownian", "sigma": bench.sigma}} if cls == "SBFBSDE"
                         else {"sigma": bench.sigma})  # a policy bridge's reference is a process
            solver = getattr(sbridge, cls)(dim, device="cpu", seed=args.solver_seed, **reference, **build)
            solver.fit(x0, x1, **({} if cls == "GaussianSB" else fit))  # GaussianSB: closed form, no options
            recorded = _recorded(solver)
        seconds = time.perf_counter() - start
        sde = solver.transport(repeated_sde, steps=None if cls == "DSB" else args.sde_steps, seed=3)
        row = {**base, "method": method, "settings": recorded, "seconds": seconds,
               "sde_steps": args.sde_steps, "sde_per_input": k_sde,
               "cbw2_uvp_sde": metrics.cbw2_uvp(sde.reshape(-1, k_sde, dim), true_mean, true_cov, var)}
        row["cbw2_uvp_sde_excess"] = row["cbw2_uvp_sde"] - draw_floor
        if cls == "LightSB":  # exact draws of its plan, and its closed-form moments
            draws = solver.transport(repeated).reshape(-1, k, dim)
            row["cbw2_uvp"] = metrics.cbw2_uvp(draws, true_mean, true_cov, var)
            row["cbw2_uvp_exact"] = _exact_cbw(solver.ema_models["fwd"], inputs, true_mean, true_cov, var)
            ends = solver.transport(bench.sample_x0(10_000, generator=g))
        else:
            ends = solver.transport(bench.sample_x0(10_000, generator=g), steps=None if cls == "DSB" else
                                    args.sde_steps, seed=4)
        row["bw2_uvp"] = metrics.bw2_uvp(ends, target)
        row["finite"] = bool(torch.isfinite(sde).all() and torch.isfinite(ends).all())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _recorded(solver: Any) -> dict[str, Any]:
    """The settings of a fitted solver worth a column: its options and training configuration, where it has them."""
    found = dict(solver.options())
    if hasattr(solver, "first_coupling"):  # DSBM: the start in effect ("auto" resolved)
        found["start"] = solver.first_coupling
    config = getattr(solver, "train_config", None)
    if config is not None:
        found.update(config.to_dict())
    kept = {k: found[k] for k in RECORDED if k in found}
    models = getattr(solver, "models", None)
    if models and "covariance" not in kept:  # a neural bridge: the size of its networks, and their config
        kept["parameters"] = sum(p.numel() for m in models.values() for p in m.parameters())
        if getattr(solver, "net_config", None):
            kept["net"] = solver.net_config
    return kept


def _potential(settings: dict[str, Any]) -> str:
    """A short name of the model: LightSB's mixture, or the variant and network of a neural bridge."""
    if "peer" in settings:
        return f"{settings['peer']} SF2M, {settings['ot_method']} plan"
    if "covariance" in settings:
        return f"{settings['covariance']} K{settings['components']}" + (
            f" r{settings['rank']}" if settings["covariance"] == "lowrank" else "")
    variant = settings.get("coupling", settings.get("start"))
    if "parameters" in settings:
        budget = f", {settings['steps']:,} steps" if "steps" in settings else ""
        timing = ", time in every layer" if settings.get("net", {}).get("time_layers") == "all" else ""
        rate = f", lr {settings['lr']:g}" if "lr" in settings else ""
        return (f"{variant}, " if variant else "") + f"nets {settings['parameters'] / 1e3:.0f}k{timing}{budget}{rate}"
    return "closed form"


def _cell(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _published(row: dict[str, Any]) -> float | None:
    """The published figure a row reads against: LightSB's for LightSB, BM²'s (eps = 1) for DSBM."""
    name = row["method"].partition(":")[0]
    return {"lightsb": row.get("published_lightsb"), "dsbm": row.get("published_bm2")}.get(name)


def markdown(r: dict[str, Any]) -> str:
    commands = sorted({e.get("command", r["command"]) for e in r["rows"]})
    family = r["rows"][0].get("family", "rotated") if r["rows"] else "rotated"
    pairs = {"rotated": "the project's pairs (rotated covariances", "isotropic": "isotropic pairs, the kind the "
             "published files hold (EOTBenchmark(family='isotropic')"}[family]
    out = [f"# The EOT benchmark — measured on {r['machine']}", "",
           "Command(s): " + "; ".join(f"`{c}`" for c in commands) + ".", "",
           f"cBW2-UVP (%) on {pairs}; maths.md §H; 'floor': the true plan sampled alike; 'sde floor': the "
           "true drift through the same SDE sampler; 'exact': from the learned plan's closed-form moments, floor 0). "
           "'published': LightSB on the published pairs (other draws of the same construction). Neural bridges are "
           "scored through their SDE only (compare 'SDE' with 'sde floor', both with the row's draws per input). "
           "'SDE excess': SDE minus the true plan's score with as many exact draws per input, i.e. the SDE figure with "
           "the estimator's sampling bias taken off (to first order): an estimate of what many draws would score, "
           "comparable with the published figures ('published': LightSB on LightSB rows, BM² at eps = 1 on DSBM rows; "
           "negative within the noise when the model is at the floor).", "",
           "| D | eps | method | model | cBW2-UVP | floor | ratio | exact | SDE | sde floor | SDE draws/input | "
           "SDE excess | published | BW2-UVP (floor) | fit seconds |",
           "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in r["rows"]:
        sampled = e.get("cbw2_uvp")
        ratio = None if sampled is None else sampled / e["floor"]
        out.append(f"| {e['dim']} | {e['eps']:g} | {e['method']} | {_potential(e['settings'])} | {_cell(sampled)} | "
                   f"{e['floor']:.3f} | {_cell(ratio, 2)} | {_cell(e.get('cbw2_uvp_exact'))} | "
                   f"{e['cbw2_uvp_sde']:.3f} | {e['sde_floor']:.3f} | {e['sde_per_input']} | "
                   f"{_cell(e.get('cbw2_uvp_sde_excess'))} | {_cell(_published(e), 2)} | "
                   f"{e['bw2_uvp']:.3f} ({e['bw2_uvp_floor']:.3f}) | {e['seconds']:.1f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dims", default="2,16,64,128")
    parser.add_argument("--eps", default="0.1,1,10")
    parser.add_argument("--methods", default="lightsb",
                        help="comma-separated: " + ", ".join(SOLVERS) + "; name:variant for sf2m's coupling "
                             "(entropic, exact, independent) and dsbm's start; torchcfm[:exact|sinkhorn] for the "
                             "peer (torchcfm's SF2M, `make bench-peers`)")
    parser.add_argument("--components", type=int, default=None, help="mixture components (default: the solver's)")
    parser.add_argument("--covariance", default=None, help="diagonal, full, lowrank or auto (default: the solver's)")
    parser.add_argument("--rank", type=int, default=None, help="rank of lowrank covariances (default: the solver's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the solver's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the solver's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the solver's)")
    parser.add_argument("--hidden", type=int, default=None, help="network width of neural bridges")
    parser.add_argument("--depth", type=int, default=None, help="network depth of neural bridges")
    parser.add_argument("--net", default=None, help='network config of neural bridges as JSON, e.g. '
                        '\'{"name": "mlp", "hidden": 256, "time_layers": "all"}\'')
    parser.add_argument("--family", default="rotated", choices=("rotated", "isotropic"),
                        help="the benchmark's pairs: rotated (the project's) or isotropic (the published kind)")
    parser.add_argument("--n-train", type=int, default=1_000_000)
    parser.add_argument("--n-inputs", type=int, default=500)
    parser.add_argument("--per-input", type=int, default=500)
    parser.add_argument("--sde-steps", type=int, default=100)
    parser.add_argument("--sde-per-input", type=int, default=100, help="SDE draws per test input (its floor alike)")
    parser.add_argument("--solver-seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="results file stem in benchmarks/results (default: eot, or eot_isotropic)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of other cells already in the results file (run cells separately)")
    args = parser.parse_args()
    if args.out is None:
        args.out = "eot" if args.family == "rotated" else "eot_isotropic"
    if args.quick:
        args.steps, args.n_train, args.n_inputs, args.per_input, args.sde_steps = 50, 2000, 20, 20, 10
        args.sde_per_input = 20
        args.dims, args.out = "2", args.out + "_quick"
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": "python benchmarks/bench_eot.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k not in ("quick", "merge") and v is not None and v is not False) + (" --quick" if args.quick else ""),
        "rows": []}
    path = RESULTS / f"{args.out}.json"
    kept = json.loads(path.read_text())["rows"] if args.merge and path.is_file() else []
    for dim in [int(d) for d in args.dims.split(",")]:
        for eps in [float(e) for e in args.eps.split(",")]:
            rows = cell(dim, eps, args)
            for row in rows:
                row["command"] = result["command"]
            keys = {(r["dim"], r["eps"], r["method"]) for r in rows}
            kept = [r for r in kept if (r["dim"], r["eps"], r["method"]) not in keys] + rows
            result["rows"] = sorted(kept, key=lambda r: (r["dim"], r["eps"], r["method"]))
            write(result, args.out)  # after every cell: a run stopped part-way keeps what it measured
    print(markdown(result))


def write(result: dict[str, Any], stem: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
