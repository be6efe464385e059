"""Benchmarks of the bridge solvers (GaussianSB, DSB, DSBM; LightSB, SF2M and SB-FBSDE with ``--methods``)
against known solutions.

Parts (``--parts``):

* ``gaussian``: the DSBM paper's Gaussian protocol, N(-0.1 * 1, I) -> N(0.1 * 1, I), sigma = 1, d in {5, 20, 50}:
  errors of the transported mean, variance and cross-covariance against the closed form (maths.md §G), and the
  KL between the learned and the true marginals averaged over t in {0.1, ..., 0.9} (Gaussian fits of the
  simulated paths; the GaussianSB row — exact drift, same n — is the Monte-Carlo floor of that estimate); method
  ``dsb_exact``: DSB's IPF in exact arithmetic on the true moments (``sbridge.numerics.gaussian_ipf``, maths.md
  §D.7), DSB's default grid and iterations: what DSB would reach with a perfect regression and infinite data;
* ``eot``: entropic-OT pairs with a known plan (maths.md §H), D in {2, 16}, eps in {0.1, 1, 10}: cBW2-UVP and
  BW2-UVP beside their Monte-Carlo floors (the true plan sampled the same way);
* ``toy``: 2-D transports moons -> 8gaussians and N(0, I) -> scurve: W2 to fresh target points, with wall time and NFE.

Writes ``benchmarks/results/bridges.json`` and ``.md``. Run alone on an idle machine (timings are wall clock):
``.venv/bin/python benchmarks/bench_bridges.py``.
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
from sbridge.data import toy
from sbridge.numerics.gaussian_ipf import gaussian_ipf
from sbridge.processes.gaussian import GaussianBridge, gaussian_kl

RESULTS = Path(__file__).parent / "results"
SIGMA = 1.0
#: Seed of every learned solver (``--solver-seed``): rerunning with another seed measures the seed-to-seed spread.
SOLVER_SEED = 0


def _net(dim: int) -> dict[str, int]:
    return {"hidden": 128 if dim <= 5 else 256, "depth": 3}


def make_solver(method: str, dim: int, sigma: float, seed: int | None = None) -> sbridge.BridgeSolver:
    seed = SOLVER_SEED if seed is None else seed
    if method == "gaussian_sb":
        return sbridge.GaussianSB(dim, sigma=sigma, seed=seed, device="cpu")
    if method == "lightsb":  # a Gaussian-mixture potential, no network
        return sbridge.LightSB(dim, sigma=sigma, seed=seed, device="cpu")
    if method == "sbfbsde":  # a policy bridge: its reference is a process, here the bridges' Brownian motion
        return sbridge.SBFBSDE(dim, process={"name": "brownian", "sigma": sigma}, seed=seed, device="cpu",
                               **_net(dim))
    cls = {"dsb": sbridge.DSB, "dsbm": sbridge.DSBM, "sf2m": sbridge.SF2M}[method]
    return cls(dim, sigma=sigma, seed=seed, device="cpu", **_net(dim))


def fit(solver: sbridge.BridgeSolver, x0: torch.Tensor, x1: torch.Tensor, budget: dict[str, int]) -> float:
    """Fit with the method's budget; returns wall seconds."""
    t = time.perf_counter()
    if isinstance(solver, sbridge.DSB):
        solver.fit(x0, prior=x1, iterations=budget["dsb_iterations"], steps=budget["dsb_steps"], quiet=True)
    elif isinstance(solver, sbridge.DSBM):
        solver.fit(x0, prior=x1, iterations=budget["dsbm_iterations"], steps=budget["dsbm_steps"], quiet=True)
    elif isinstance(solver, sbridge.GaussianSB):
        solver.fit(x0, prior=x1)
    else:  # LightSB, SF2M, SB-FBSDE: their own defaults but for the step count
        solver.fit(x0, prior=x1, steps=budget[f"{solver.method}_steps"], quiet=True)
    return time.perf_counter() - t


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _nearest(grid: torch.Tensor, times: list[float]) -> list[int]:
    """The index of the grid time nearest each of ``times``."""
    return [int(torch.argmin((grid - t).abs())) for t in times]


def _transported_moments(solver: sbridge.BridgeSolver, test0: torch.Tensor, times: list[float],
                         chunk: int = 10_000) -> tuple[list[float], list[torch.Tensor], torch.Tensor]:
    """Forward-transport ``test0`` in chunks (100 SDE steps, DSB on its grid) and keep, at the grid times nearest
    ``times`` and at t = 1, the points themselves: (grid times used, points at each, points at t = 1)."""
    kept: list[list[torch.Tensor]] = [[] for _ in times]
    ends, used = [], []
    for i in range(0, test0.shape[0], chunk):
        kw = {} if isinstance(solver, sbridge.DSB) else {"steps": 100}
        path = solver.transport(test0[i:i + chunk], return_path=True, seed=11 + i, **kw)
        grid = (torch.tensor(solver.times, dtype=torch.float64) if isinstance(solver, sbridge.DSB)
                else torch.linspace(0, 1, path.shape[0], dtype=torch.float64))
        index = _nearest(grid, times)
        used = [float(grid[k]) for k in index]
        for slot, k in zip(kept, index, strict=True):
            slot.append(path[k].double())
        ends.append(path[-1].double())
    return used, [torch.cat(slot) for slot in kept], torch.cat(ends)


def dsb_exact_row(d: int, truth: GaussianBridge, iterations: int) -> dict[str, Any]:
    """DSB in exact arithmetic on this pair (true moments, no sample): its errors and mean KL at the grid times
    nearest t = 0.1..0.9, exact (closed-form KL between Gaussians, no estimator)."""
    dsb = sbridge.DSB(d, sigma=SIGMA, device="cpu")
    last = gaussian_ipf(truth.a.double(), 1.0, truth.b.double(), 1.0, SIGMA, dsb.gammas, iterations)[-1]
    grid = torch.tensor(dsb.times, dtype=torch.float64)
    index = _nearest(grid, [0.1 * k for k in range(1, 10)])
    kls = [gaussian_kl(last.path_mean[k], torch.diag(last.path_var[k]), truth.mean(float(grid[k])).double(),
                       truth.cov(float(grid[k])).double()) for k in index]
    cross = torch.diag(last.cross)
    return {"dim": d, "method": "dsb_exact", "seconds": 0.0, "n_eval": 0, "iterations": iterations,
            "mean_error": float((last.mean1 - truth.b.double()).norm() / math.sqrt(d)),
            "var_error": float((last.var1 - 1).abs().mean()),
            "cross_cov_error": float((cross - truth.C.double()).norm() / truth.C.double().norm()),
            "kl_mean": sum(kls) / len(kls), "kl_exact": True}


def gaussian_part(dims: list[int], methods: list[str], budget: dict[str, int], n_eval: int) -> list[dict[str, Any]]:
    """Errors of ``n_eval`` forward-transported held-out points; the KL of each marginal's Gaussian fit has its
    estimator floor taken off (``metrics.gaussian_fit_kl``, maths.md §G.7), so that exact samples score 0 on
    average; the GaussianSB row (closed form between the Gaussian fits of the training points) is what the finite
    training sample leaves."""
    rows = []
    for d in dims:
        a, b = -0.1 * torch.ones(d), 0.1 * torch.ones(d)
        eye = torch.eye(d)
        truth = GaussianBridge(a, eye, b, eye, sigma=SIGMA)
        g = torch.Generator().manual_seed(d)
        x0 = a + torch.randn(20_000, d, generator=g)
        x1 = b + torch.randn(20_000, d, generator=g)
        test0 = a + torch.randn(n_eval, d, generator=g)
        for method in methods:
            if method == "dsb_exact":
                rows.append(dsb_exact_row(d, truth, budget["dsb_iterations"]))
                print(rows[-1], flush=True)
                continue
            solver = make_solver(method, d, SIGMA)
            seconds = fit(solver, x0, x1, budget)
            times, points, y = _transported_moments(solver, test0, [0.1 * k for k in range(1, 10)])
            kls = [metrics.gaussian_fit_kl(p, truth.mean(t), truth.cov(t)) for t, p in zip(times, points, strict=True)]
            m1, S1 = _moments(y)
            cross = ((test0.double() - test0.double().mean(0)).T @ (y - m1)) / (n_eval - 1)
            rows.append({
                "dim": d, "method": method, "seconds": seconds, "n_eval": n_eval,
                "mean_error": float((m1 - b.double()).norm() / math.sqrt(d)),
                "var_error": float((S1.diagonal() - 1).abs().mean()),
                "cross_cov_error": float((cross - truth.C).norm() / truth.C.norm()),
                "kl_mean": sum(kls) / len(kls), "kl_debiased": True,
            })
            print(rows[-1], flush=True)
    return rows


def toy_part(methods: list[str], budget: dict[str, int], n_eval: int) -> list[dict[str, Any]]:
    rows = []
    pairs = [("moons", "8gaussians"), ("gaussian", "scurve")]
    for src, dst in pairs:
        x0, x1 = toy.sample(src, 20_000, seed=0), toy.sample(dst, 20_000, seed=1)
        t0, ref = toy.sample(src, n_eval, seed=10), toy.sample(dst, n_eval, seed=11)
        for method in methods:
            solver = make_solver(method, 2, SIGMA)
            seconds = fit(solver, x0, x1, budget)
            y = solver.transport(t0) if isinstance(solver, sbridge.DSB) else solver.transport(t0, steps=100)
            rows.append({"pair": f"{src} -> {dst}", "method": method, "seconds": seconds, "nfe": solver.last_nfe,
                         "w2": metrics.w2(y, ref), "w2_floor": metrics.w2(toy.sample(dst, n_eval, seed=12), ref)})
            print(rows[-1], flush=True)
    return rows


def eot_part(dims: list[int], epsilons: list[float], methods: list[str], budget: dict[str, int],
             n_inputs: int, per_input: int) -> list[dict[str, Any]]:
    from sbridge.data.eot_benchmark import EOTBenchmark

    rows = []
    for d in dims:
        for eps in epsilons:
            bench = EOTBenchmark(dim=d, eps=eps, seed=0)
            g = torch.Generator().manual_seed(1)
            x0, x1 = bench.sample_x0(20_000, generator=g), bench.sample_x1(20_000, generator=g)
            inputs = bench.test_inputs(n_inputs, seed=2)
            true_mean, true_cov = bench.conditional_moments(inputs)
            var = bench.x1_var()
            truth_cond = bench.sample_conditional(inputs, per_input, generator=g)
            floor = metrics.cbw2_uvp(truth_cond, true_mean, true_cov, var)
            target = bench.sample_x1(10_000, generator=g)
            bw_floor = metrics.bw2_uvp(bench.sample_x1(10_000, generator=g), target)
            for method in methods:
                solver = make_solver(method, d, math.sqrt(eps))
                seconds = fit(solver, x0, x1, budget)
                rep = inputs.repeat_interleave(per_input, 0)
                kw = {} if isinstance(solver, sbridge.DSB) else {"steps": 100}
                y = solver.transport(rep, **kw).reshape(n_inputs, per_input, d)
                y_marg = solver.transport(bench.sample_x0(10_000, generator=g), **kw)
                rows.append({"dim": d, "eps": eps, "method": method, "seconds": seconds,
                             "cbw2_uvp": metrics.cbw2_uvp(y, true_mean, true_cov, var), "cbw2_uvp_floor": floor,
                             "bw2_uvp": metrics.bw2_uvp(y_marg, target), "bw2_uvp_floor": bw_floor})
                print(rows[-1], flush=True)
    return rows


def _name(row: dict[str, Any]) -> str:
    """A row's method, marked * when an earlier run measured it."""
    return row["method"] + (" *" if "earlier" in row else "")


def _above_floor(row: dict[str, Any], floors: dict[int, float]) -> str:
    """The row's mean KL above the finite-sample floor (x1e-3); an exact-arithmetic row has no sample, no floor."""
    if row.get("kl_exact"):
        return f"{1e3 * row['kl_mean']:.2f}"
    return f"{1e3 * (row['kl_mean'] - floors[row['dim']]) if row['dim'] in floors else float('nan'):.2f}"


def markdown(r: dict[str, Any]) -> str:
    out = [f"# Bridge solvers — measured on {r['machine']}", "", f"Command: `{r['command']}`.", "",
           f"Budgets: {r['budget']}.", ""]
    for part, run in r.get("earlier", {}).items():
        out += [f"Part {part!r} from an earlier run: `{run['command']}`, budgets {run['budget']}.", ""]
    earlier_rows = {json.dumps(row["earlier"]) for part in ("gaussian", "eot", "toy") for row in r.get(part, [])
                    if "earlier" in row}
    for run in map(json.loads, sorted(earlier_rows)):
        out += [f"Rows marked * from an earlier run: `{run['command']}`, budgets {run['budget']}.", ""]
    if r.get("gaussian"):
        out += ["## Gaussian, N(-0.1·1, I) -> N(0.1·1, I), sigma = 1 (DSBM-paper protocol)", "",
                "Errors of forward-transported held-out points: mean (RMS per coordinate), variance (mean absolute "
                "per coordinate), cross-covariance (relative Frobenius), and the KL between Gaussian fits of the "
                "simulated marginals and the true ones, averaged over t = 0.1..0.9, with the estimator's floor at this "
                "sample size taken off (maths.md §G.7: exact samples score 0 +- ~3e-4 at d = 50). GaussianSB is "
                "the closed-form bridge between Gaussian fits of the 20,000 training points of each end, through "
                "the same sampler: its KL is what the finite training sample leaves (about d(d + 3) / (4 n) at "
                "each end; the discretisation adds little: 11.7e-3 on DSB's 40-step grid against 11.3e-3 with 100 "
                "steps at d = 50), the floor of every learned bridge trained on these points.", "",
                "| d | method | mean err | var err | cross-cov err | mean KL (x1e-3) | KL above floor (x1e-3) "
                "| seconds |",
                "|---:|---|---:|---:|---:|---:|---:|---:|"]
        floors = {g["dim"]: g["kl_mean"] for g in r["gaussian"] if g["method"] == "gaussian_sb"}
        out += [f"| {g['dim']} | {_name(g)} | {g['mean_error']:.4f} | {g['var_error']:.4f} | "
                f"{g['cross_cov_error']:.4f} | {1e3 * g['kl_mean']:.2f} | {_above_floor(g, floors)} | "
                f"{g['seconds']:.1f} |" for g in r["gaussian"]]
        out += ["", "dsb_exact: DSB's IPF in exact arithmetic on the true moments (maths.md §D.7; default grid and "
                "iterations, no sample, so its KL is exact and has no floor to take off): what DSB would reach "
                "with a perfect regression at every half-step."]
        out += ["", "Published (DSBM paper, Table 3, mean KL x1e-3 at d = 50): DSBM-IPF 8.75, DSBM-IMF 9.76, "
                "DSB 32.8, SB-CFM 49.4.", ""]
    if r.get("eot"):
        out += ["## Entropic-OT pairs with a known plan (maths.md §H)", "",
                "| D | eps | method | cBW2-UVP % | floor | BW2-UVP % | floor | seconds |",
                "|---:|---:|---|---:|---:|---:|---:|---:|"]
        out += [f"| {e['dim']} | {e['eps']} | {_name(e)} | {e['cbw2_uvp']:.2f} | {e['cbw2_uvp_floor']:.2f} | "
                f"{e['bw2_uvp']:.2f} | {e['bw2_uvp_floor']:.2f} | {e['seconds']:.1f} |" for e in r["eot"]]
        out += [""]
    if r.get("toy"):
        out += ["## 2-D transports (sigma = 1)", "", "| pair | method | W2 | floor | NFE | seconds |",
                "|---|---|---:|---:|---:|---:|"]
        out += [f"| {t['pair']} | {_name(t)} | {t['w2']:.3f} | {t['w2_floor']:.3f} | {t['nfe']} | "
                f"{t['seconds']:.1f} |" for t in r["toy"]]
        out += ["", "Published W2 (DSBM paper): moons -> 8gaussians DSBM-IPF 0.812, DSB 0.987; N(0, I) -> scurve "
                "DSBM-IPF 0.140, DSB 0.272 (their data scaling and sigma, so compare trends, not digits).", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="gaussian,eot,toy")
    parser.add_argument("--dims", default="5,20,50")
    parser.add_argument("--methods", default="gaussian_sb,dsbm,dsb")
    parser.add_argument("--dsbm-steps", type=int, default=sbridge.DSBM.default_steps)
    parser.add_argument("--dsb-steps", type=int, default=sbridge.DSB.default_steps)
    parser.add_argument("--eot-dims", default="2,16")
    parser.add_argument("--solver-seed", type=int, default=0,
                        help="seed of the learned solvers; results go to bridges_seedN.* when it is not 0")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the markdown table of a results file")
    args = parser.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(markdown(result))
        return
    global SOLVER_SEED
    SOLVER_SEED = args.solver_seed
    budget = {"dsbm_iterations": sbridge.DSBM.default_iterations, "dsbm_steps": args.dsbm_steps,
              "dsb_iterations": sbridge.DSB.default_iterations, "dsb_steps": args.dsb_steps,
              "lightsb_steps": sbridge.LightSB.default_steps, "sf2m_steps": sbridge.SF2M.default_steps,
              "sbfbsde_steps": sbridge.SBFBSDE.default_steps}
    if args.quick:
        budget = {"dsbm_iterations": 2, "dsbm_steps": 40, "dsb_iterations": 1, "dsb_steps": 40, "lightsb_steps": 40,
                  "sf2m_steps": 40, "sbfbsde_steps": 40}
    methods, parts = args.methods.split(","), args.parts.split(",")
    n_eval = 2000 if args.quick else 100_000
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "command": "python benchmarks/bench_bridges.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k != "quick" and v is not None) + (" --quick" if args.quick else ""),
        "budget": budget,
    }
    if "gaussian" in parts:
        result["gaussian"] = gaussian_part([int(d) for d in args.dims.split(",")], methods, budget, n_eval)
    if "eot" in parts:
        result["eot"] = eot_part([int(d) for d in args.eot_dims.split(",")], [0.1, 1.0, 10.0], methods, budget,
                                 n_inputs=100 if args.quick else 500, per_input=100 if args.quick else 500)
    if "toy" in parts:
        result["toy"] = toy_part(methods, budget, 2000 if args.quick else 10_000)
    RESULTS.mkdir(exist_ok=True)
    name = ("bridges_quick" if args.quick else "bridges") + (f"_seed{SOLVER_SEED}" if SOLVER_SEED else "")
    previous = RESULTS / f"{name}.json"
    if previous.is_file():  # keep the parts not rerun, with the command and budget that measured them
        old = json.loads(previous.read_text())
        for part in ("gaussian", "eot", "toy"):
            if part not in result and part in old:
                result[part] = old[part]
                result.setdefault("earlier", {})[part] = old.get("earlier", {}).get(
                    part, {"command": old["command"], "budget": old["budget"]})
            elif part in result and part in old:  # rows of methods not rerun stay, marked with what measured them
                kept = [{**row, "earlier": row.get("earlier", {"command": old["command"], "budget": old["budget"]})}
                        for row in old[part] if row["method"] not in methods]
                result[part] = kept + result[part]
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
