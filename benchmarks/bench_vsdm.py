"""Benchmark: VSDM vs SGM (maths.md §C.7) — the anisotropic 2-D sets and the Gaussian check.

Part 1, anisotropic sets: spiral stretched 8x on y, checkerboard stretched 6x on x. Every solver uses beta_max = 10
(under which SGM leaves the stretched axis under-noised), the MLP 3x128, ``--steps`` steps of batch 512 with a cosine
learning rate, two training seeds. VSDM: 10 stages, zeta = 0.75, a diagonal or a full A. Quality at NFE 6..100 with
the reverse SDE (Euler-Maruyama, NFE = steps), Euler and Heun on the probability flow (Heun: 2 NFE a step):
energy distance of 3,000 samples to fresh data divided by its noise floor (two independent data samples), and
sliced W2 beside its floor. Straightness (chord / arc) and kinetic energy of 100-step probability-flow paths.

Part 2, the Gaussian check: data N((-8, 2), [[1, 1], [1, 5]]) -> N(0, I) under constant beta = 4 (the paper's) and
centred data N(0, [[1, 1], [1, 5]]) under beta = 1. Exact scores (``gaussian.GaussianNoiseOracle``) isolate what the
SA on A does; 20 stages, zeta = 1, a fixed N(0, I) prior. VSDM's backward transport (20,000 SDE paths of 100 steps)
against the closed-form SB under the same reference (``gaussian.LinearGaussianBridge``): relative error of the
coupling Cov(X_0, X_1), KL of the generated law to the data and of the t = 1/2 marginal to the SB's.

Writes ``benchmarks/results/vsdm.json``, ``.md`` and ``vsdm_samples.png``, ``vsdm_gaussian.png``. Run alone:
``.venv/bin/python benchmarks/bench_vsdm.py [--steps 4000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import sbridge
from sbridge import metrics
from sbridge.data import toy
from sbridge.processes.gaussian import GaussianNoiseOracle, LinearGaussianBridge, gaussian_kl

RESULTS = Path(__file__).parent / "results"
SETS = {"spiral x8 on y": ("spiral", (1.0, 8.0)), "checkerboard x6 on x": ("checkerboard", (6.0, 1.0))}
NFES = (6, 10, 25, 50, 100)
SEEDS = (0, 1)
METHODS = ("sgm", "vsdm diag", "vsdm full")


def make(method: str, seed: int) -> sbridge.Solver:
    net = {"hidden": 128, "depth": 3, "seed": seed, "device": "cpu"}
    if method == "sgm":
        return sbridge.SGM(2, process={"name": "vp", "beta_max": 10.0}, **net)
    kind = method.split()[1].replace("diag", "diagonal")
    return sbridge.VSDM(2, beta_max=10.0, stages=10, zeta=0.75, sa_lr=0.2, a_kind=kind, **net)


def quality(model: sbridge.Solver, ref: torch.Tensor, floors: dict[str, float], n: int) -> dict[str, dict]:
    out = {}
    for nfe in NFES:
        draws = {"sde": model.sample(n, steps=nfe, seed=11),
                 "ode_euler": model.sample(n, steps=nfe, ode=True, method="euler", seed=11),
                 "ode_heun": model.sample(n, steps=max(nfe // 2, 1), ode=True, method="heun", seed=11)}
        out[str(nfe)] = {k: {"energy": metrics.energy_distance(x, ref) / floors["energy"],
                             "sliced_w2": metrics.sliced_w2(x, ref)} for k, x in draws.items()}
    return out


def anisotropic(steps: int, n_eval: int) -> tuple[list[dict], dict]:
    rows, pictures = [], {}
    for label, (name, scale) in SETS.items():
        x = toy.sample(name, 20_000, seed=0, scale=scale)
        ref = toy.sample(name, n_eval, seed=1, scale=scale)
        other = toy.sample(name, n_eval, seed=2, scale=scale)
        floors = {"energy": metrics.energy_distance(other, ref), "sliced_w2": metrics.sliced_w2(other, ref)}
        pictures[label] = {"data": ref}
        for method in METHODS:
            for seed in SEEDS:
                model = make(method, seed)
                t = time.perf_counter()
                model.fit(x, steps=steps, batch_size=512, lr=2e-3, lr_schedule="cosine", quiet=True)
                row = {"data": label, "method": method, "seed": seed, "train_s": time.perf_counter() - t,
                       "floors": floors, "quality": quality(model, ref, floors, n_eval)}
                paths = model.sample(1000, steps=100, ode=True, method="euler", return_path=True, seed=12)
                row["straightness"] = metrics.path_straightness(paths)
                row["kinetic_energy"] = metrics.kinetic_energy(paths)
                if method != "sgm":
                    row["A"] = model.A.tolist()
                if seed == SEEDS[0]:
                    pictures[label][method] = model.sample(n_eval, steps=50, seed=11)
                rows.append(row)
                q = row["quality"]["50"]
                print(label, method, seed, f"{row['train_s']:.1f}s", "NFE 50 SDE", round(q["sde"]["energy"], 2),
                      "Heun", round(q["ode_heun"]["energy"], 2), flush=True)
    return rows, pictures


GAUSSIAN_CASES = {
    "paper: N((-8, 2), S) -> N(0, I), beta = 4": (torch.tensor([-8.0, 2.0]), 4.0),
    "centred: N(0, S) -> N(0, I), beta = 1": (torch.zeros(2), 1.0),
}
COV = torch.tensor([[1.0, 1.0], [1.0, 5.0]])


def gaussian_check(n: int = 20_000, steps: int = 100) -> tuple[list[dict], dict]:
    rows, pictures = [], {}
    for label, (mean, beta) in GAUSSIAN_CASES.items():
        bridge = LinearGaussianBridge(mean, COV, torch.zeros(2), torch.eye(2), c=lambda t, b=beta: -0.5 * b,
                                      g=lambda t, b=beta: math.sqrt(b))
        x = mean + torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)) @ torch.linalg.cholesky(COV).T
        z = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
        pictures[label] = {"sb": _sb_flow(bridge, z, steps)}
        for name, kind, stages, sa_lr in (("A = 0 (VP)", "full", 1, 0.0), ("vsdm diag", "diagonal", 20, 0.3),
                                          ("vsdm full", "full", 20, 0.3)):
            model = sbridge.VSDM(2, beta_min=beta, beta_max=beta, a_kind=kind, zeta=1.0, prior=1.0, stages=stages,
                                 sa_lr=sa_lr, sa_samples=4000, sa_steps=steps, net=GaussianNoiseOracle(mean, COV),
                                 device="cpu")
            for module in (model.models["score"], model.ema_models["score"]):
                module.bind(model.reference)
            t = time.perf_counter()
            model.fit(x, steps=stages, batch_size=64, quiet=True)
            seconds = time.perf_counter() - t
            path = model.sample(n, steps=steps, return_path=True, seed=5).double()
            x0, x1, mid = path[-1], path[0], path[steps // 2]
            cross = (x0 - x0.mean(0)).T @ (x1 - x1.mean(0)) / n
            rows.append({"case": label, "method": name, "A": model.A.tolist(), "sa_s": seconds,
                         "coupling_error": float((cross - bridge.C).norm() / bridge.C.norm()),
                         "kl_data": gaussian_kl(x0.mean(0), torch.cov(x0.T), mean, COV),
                         "kl_mid": gaussian_kl(mid.mean(0), torch.cov(mid.T), bridge.mean(0.5), bridge.cov(0.5)),
                         "prior_kl": model.prior_mismatch(x)})
            pictures[label][name] = model.sample(32, steps=steps, ode=True, method="euler", return_path=True,
                                                 x_T=z).flip(0)  # data (t = 0) first, as the SB's paths
            print(label, name, {k: round(v, 4) for k, v in rows[-1].items() if isinstance(v, float)}, flush=True)
    return rows, pictures


def _sb_flow(bridge: LinearGaussianBridge, z: torch.Tensor, steps: int) -> torch.Tensor:
    """Probability-flow paths of the closed-form SB from ``z`` at t = 1 back to t = 0 (Euler), data end first."""
    x, path = z.double(), [z.double()]
    for i in range(steps, 0, -1):
        t = i / steps
        x = x - bridge.velocity(x, t) / steps
        path.append(x)
    return torch.stack(path[::-1]).float()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_samples(samples: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(len(samples), 1 + len(METHODS), figsize=(3.2 * (1 + len(METHODS)), 3.4 * len(samples)))
    for row, (label, clouds) in zip(axes, samples.items(), strict=True):
        lim = clouds["data"].abs().quantile(0.995, dim=0) * 1.15
        for ax, key in zip(row, ("data", *METHODS), strict=True):
            pts = clouds[key]
            ax.scatter(pts[:, 0], pts[:, 1], s=0.6, alpha=0.5, color="tab:blue" if key == "data" else "tab:orange")
            ax.set_xlim(-lim[0], lim[0])
            ax.set_ylim(-lim[1], lim[1])
            ax.set_title(f"{label}: {key}" if key == "data" else f"{key} (SDE, 50 steps)", fontsize=8)
    fig.suptitle("measured: samples at beta_max = 10 (bench_vsdm.py, seed 0)")
    fig.tight_layout()
    fig.savefig(path.with_name("vsdm_samples.png"), dpi=100)
    plt.close(fig)


def draw_gaussian(gaussian: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(gaussian), figsize=(6 * len(gaussian), 5))
    for ax, (label, paths) in zip(axes, gaussian.items(), strict=True):
        for key, color in (("sb", "black"), ("A = 0 (VP)", "tab:blue"), ("vsdm full", "tab:orange")):
            p = paths[key]
            for i in range(p.shape[1]):
                ax.plot(p[:, i, 0], p[:, i, 1], lw=0.8, alpha=0.7, color=color,
                        label={"sb": "closed-form SB"}.get(key, key) if i == 0 else None)
            ax.scatter(p[0, :, 0], p[0, :, 1], s=6, color=color)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("measured: Gaussian check, probability-flow paths from the same prior points (t = 1) to the data "
                 "(t = 0, dots); exact scores")
    fig.tight_layout()
    fig.savefig(path.with_name("vsdm_gaussian.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=3000)
    parser.add_argument("--only-gaussian", action="store_true",
                        help="re-run only the Gaussian check, keeping the recorded anisotropic rows")
    args = parser.parse_args()
    torch.set_num_threads(2)
    gaussian_rows, gaussian_pictures = gaussian_check()
    RESULTS.mkdir(exist_ok=True)
    if args.only_gaussian:
        result = json.loads((RESULTS / "vsdm.json").read_text())
    else:
        rows, pictures = anisotropic(args.steps, args.n_eval)
        draw_samples(pictures, RESULTS / "vsdm.md")
        result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch "
                             f"{torch.__version__}",
                  "command": f"python benchmarks/bench_vsdm.py --steps {args.steps} --n-eval {args.n_eval}",
                  "rows": rows}
    result["gaussian_check"] = gaussian_rows
    (RESULTS / "vsdm.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "vsdm.md").write_text(markdown(result))
    draw_gaussian(gaussian_pictures, RESULTS / "vsdm.md")
    print(markdown(result))


def _mean(rows: list[dict], get) -> float:
    return statistics.fmean(get(r) for r in rows)


def markdown(r: dict) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in r["rows"]:
        groups.setdefault((row["data"], row["method"]), []).append(row)
    seeds = len(next(iter(groups.values())))
    lines = [f"# VSDM vs SGM — measured on {r['machine']}", "",
             f"Command: `{r['command']}`. Figures are means over {seeds} training seeds.", "",
             "## Anisotropic sets at beta_max = 10: energy distance / noise floor (1 = indistinguishable)", "",
             "Reverse SDE (Euler-Maruyama) / probability-flow ODE with Heun (NFE // 2 steps) / with Euler.", "",
             "| data | method | " + " | ".join(f"NFE {n}" for n in NFES) + " | train s |",
             "|---|---|" + "---:|" * (len(NFES) + 1)]
    for (data, method), rs in groups.items():
        cells = []
        for n in NFES:
            vals = [_mean(rs, lambda x, k=k, n=n: x["quality"][str(n)][k]["energy"])
                    for k in ("sde", "ode_heun", "ode_euler")]
            cells.append(" / ".join(f"{v:.2f}" for v in vals))
        lines.append(f"| {data} | {method} | " + " | ".join(cells) + f" | {_mean(rs, lambda x: x['train_s']):.1f} |")
    lines += ["", "Sliced W2 at NFE 100 (SDE / Heun ODE; floor = two data samples), seed spread of the SDE energy "
              "ratio at NFE 50, straightness (chord / arc of 100-step Euler ODE paths) and kinetic energy:", "",
              "| data | method | SW2 SDE / ODE (floor) | SDE NFE 50 per seed | straightness | kinetic energy |",
              "|---|---|---:|---:|---:|---:|"]
    for (data, method), rs in groups.items():
        sde = _mean(rs, lambda x: x["quality"]["100"]["sde"]["sliced_w2"])
        ode = _mean(rs, lambda x: x["quality"]["100"]["ode_heun"]["sliced_w2"])
        per_seed = " / ".join(f"{x['quality']['50']['sde']['energy']:.2f}" for x in rs)
        lines.append(f"| {data} | {method} | {sde:.3f} / {ode:.3f} ({rs[0]['floors']['sliced_w2']:.3f}) | "
                     f"{per_seed} | {_mean(rs, lambda x: x['straightness']):.3f} | "
                     f"{_mean(rs, lambda x: x['kinetic_energy']):.1f} |")
    lines += ["", "Learned A (seed 0): " + "; ".join(
        f"{rs[0]['data']}, {rs[0]['method']}: {_round(rs[0]['A'])}" for rs in groups.values() if "A" in rs[0])]
    lines += ["", "## Gaussian check (exact scores, fixed N(0, I) prior, zeta = 1, 20 SA stages)", "",
              "| case | method | coupling error | KL(generated, data) | KL(t = 1/2, SB) | prior KL | A |",
              "|---|---|---:|---:|---:|---:|---|"]
    for g in r["gaussian_check"]:
        lines.append(f"| {g['case']} | {g['method']} | {g['coupling_error']:.3f} | {g['kl_data']:.4f} | "
                     f"{g['kl_mid']:.4f} | {g['prior_kl']:.4f} | {_round(g['A'])} |")
    return "\n".join(lines) + "\n"


def _round(a) -> list:
    return [_round(v) for v in a] if isinstance(a, list) else round(a, 3)


if __name__ == "__main__":
    main()
