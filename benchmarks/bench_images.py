"""Benchmark: latent Schrödinger bridges vs pixel-space solvers on images (issue 12; maths.md §B).

For each image data set (scikit-learn's 8x8 digits; Fashion-MNIST 28x28 when Debian's package is installed):

1. **Equal CPU time.** Every method trains for the same wall-clock budget (per-step time measured on a short warm-up,
   then the number of steps set to fill the budget; a latent method's budget includes its autoencoder):
   latent SGM and the paper's latent bridge (``SchrodingerFollmer``, case H) on the codes of one autoencoder, and
   pixel-space SGM and VSDM (diagonal A) with the UNet. Quality: the classifier Fréchet distance (and KID) of
   ``n`` SDE samples (100 steps) to held-out test images, beside its floor (two halves of the held-out images), and
   the fraction of samples the classifier assigns to the class they were drawn from (all runs are class-conditional).
2. **Latent dimension sweep** d* in {4, 8, 16, 32}: the same autoencoder and latent SGM budget for each d*; the
   paper's rate depends on d* (a small d* learns faster but reconstructs worse).
3. **NLL in bits/dim** of the pixel-space solvers (probability-flow ODE, dopri5; images uniformly dequantised: 17
   levels for the digits, 256 for Fashion-MNIST), on held-out images.
4. **Distribution shift** (the paper's pre-training point; digits): target classes 5-9, autoencoder pretrained on
   5-9, on 0-4 only, or on all classes; the same latent SGM budget.

Sizes are set for a 2-core CPU: the digits use the MLP autoencoder and a UNet of 32 channels; Fashion-MNIST a
convolutional autoencoder of 16 base channels and a UNet of 16 (a step of the 32-channel UNet takes 1.2 s there).

Writes ``benchmarks/results/images.json``, ``images.md`` and ``images_<data>.png`` (sample grids). Run alone (no
other training on the machine): ``.venv/bin/python benchmarks/bench_images.py [--data digits fashion-mnist]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import sbridge
from sbridge.data import images
from sbridge.metrics.images import ImageMetrics, frechet_distance
from sbridge.runs import plots
from sbridge.runs.datasets import _reference_and_floor
from sbridge.runs.scoring import negative_log_likelihood

RESULTS = Path(__file__).parent / "results"
LABELS = {"kind": "label", "classes": 10}
#: Per data set: seconds of training per method, autoencoder steps, default latent dimension, evaluation size,
#: dequantisation levels, the UNet's options, NLL points.
SETTINGS = {
    "digits": {"budget": 120.0, "ae_steps": 2000, "ae_batch": 128, "latent_dim": 8, "n_eval": 300, "levels": 17,
               "unet": {"name": "unet", "channels": 32, "channel_mults": [1, 2]}, "nll_n": 200, "sweep_steps": 1500,
               "n_curve": 300, "shift": True},
    "fashion-mnist": {"budget": 300.0, "ae_steps": 1500, "ae_batch": 64, "latent_dim": 16, "n_eval": 500,
                      "levels": 256, "unet": {"name": "unet", "channels": 16, "channel_mults": [1, 2, 2]},
                      "nll_n": 100, "sweep_steps": 2000, "shift": False, "n_curve": 200},
}
LATENT_NET = {"name": "mlp", "hidden": 256, "depth": 3}
#: VSDM's stages (one SA update of A each); every run's steps are a multiple of it.
STAGES = 4
#: Evaluations along each training run (the Fréchet distance against training time).
CURVE_POINTS = 6


def spec_of(data: str) -> dict[str, Any]:
    return {"name": data, "kind": "images", "classes": None, "data_path": None, "seed": 0}


def autoencoder(data: str, shape: tuple[int, ...], latent_dim: int, seed: int = 0) -> sbridge.Autoencoder:
    net = "mlp" if data == "digits" else {"name": "conv", "channels": 16, "levels": 2}
    return sbridge.Autoencoder(shape=shape, latent_dim=latent_dim, net=net, seed=seed, device="cpu")


def latent_solver(kind: str, latent_dim: int) -> sbridge.Solver:
    if kind == "sgm":
        return sbridge.SGM(dim=latent_dim, net=LATENT_NET, cond=LABELS, cond_drop=0.1, device="cpu")
    return sbridge.SchrodingerFollmer(dim=latent_dim, case="H", tau=4.0, net=LATENT_NET, cond=LABELS, cond_drop=0.1,
                                      device="cpu")


def pixel_solver(kind: str, shape: tuple[int, ...], unet: dict) -> sbridge.Solver:
    if kind == "sgm":
        return sbridge.SGM(shape=shape, net=unet, cond=LABELS, cond_drop=0.1, device="cpu")
    return sbridge.VSDM(shape=shape, net=unet, cond=LABELS, cond_drop=0.1, a_kind="diagonal", stages=STAGES,
                        sa_samples=256, sa_steps=25, device="cpu")


def score(model: Any, metrics: ImageMetrics, reference: torch.Tensor, n: int,
          classes: tuple[int, ...] = tuple(range(10))) -> dict[str, Any]:
    labels = torch.tensor(classes)[torch.arange(n) % len(classes)]
    start = time.perf_counter()
    x = model.sample(n, steps=100, cond=labels, seed=11)
    sampling = time.perf_counter() - start
    out = metrics.compare(x, reference)
    return {"frechet": out["frechet"]["value"], "kid": out["kid"]["value"],
            "label_accuracy": float((metrics.predict(x) == labels).float().mean()), "sample_seconds": sampling,
            "grid": x[:80].cpu()}


class Curve:
    """The classifier Fréchet distance against training time: ``fit(..., evaluate=curve, eval_every=k)`` calls it
    every ``k`` steps; it scores ``n`` quick samples (50 SDE steps) and records the training seconds so far, the
    time spent in these evaluations excluded (``offset``: seconds spent before, e.g. on the autoencoder)."""

    def __init__(self, metrics: ImageMetrics, reference: torch.Tensor, n: int, offset: float = 0.0) -> None:
        self.metrics, self.reference, self.n, self.offset = metrics, reference[:n], min(n, reference.shape[0]), offset
        self.model: Any = None
        self.points: list[dict[str, float]] = []
        self.paused = 0.0
        self.t0 = time.perf_counter()

    def start(self, model: Any) -> None:
        self.model, self.t0, self.paused = model, time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.paused + self.offset

    def __call__(self, step: int) -> dict[str, Any]:
        now = time.perf_counter()
        seconds = self.elapsed()
        x = self.model.sample(self.n, steps=50, cond=torch.arange(self.n) % 10, seed=11)
        fd = frechet_distance(self.metrics.features(x), self.metrics.features(self.reference))
        self.points.append({"step": step, "seconds": seconds, "frechet": fd})
        self.paused += time.perf_counter() - now
        return {"frechet": {"value": fd}}


def steps_for(build: Any, fit: Any, budget: float, short: int = STAGES, long: int = 6 * STAGES) -> tuple[int, float]:
    """Fit ``time(steps) = a + b steps`` from two short fits of fresh models (``a``: per-fit costs such as VSDM's SA
    updates of A, or encoding the data; ``b``: a training step) and return the steps that fill ``budget`` (a
    multiple of :data:`STAGES`) and ``b``."""
    times = []
    for steps in (short, long):
        start = time.perf_counter()
        fit(build(), steps)
        times.append(time.perf_counter() - start)
    per_step = max((times[1] - times[0]) / (long - short), 1e-6)
    fixed = max(times[0] - short * per_step, 0.0)
    steps = int(max(budget - fixed, 0.0) / per_step)
    return max(steps - steps % STAGES, STAGES), per_step


def run_data(data: str, quick: bool) -> dict[str, Any]:
    cfg = dict(SETTINGS[data])
    if quick:
        cfg.update(budget=cfg["budget"] / 10, ae_steps=cfg["ae_steps"] // 10)
    x, y = images.load(data, "train")
    shape = tuple(x.shape[1:])
    metrics = ImageMetrics(data)
    reference, floor_sample = _reference_and_floor(spec_of(data), cfg["n_eval"])
    n = reference.shape[0]
    floor = metrics.compare(floor_sample, reference)
    result: dict[str, Any] = {"n_train": int(x.shape[0]), "n_eval": n, "classifier_accuracy": metrics.accuracy,
                              "floor": {"frechet": floor["frechet"]["value"], "kid": floor["kid"]["value"]},
                              "budget_seconds": cfg["budget"], "methods": {}, "latent_sweep": {}, "nll": {}}
    grids: list[tuple[str, torch.Tensor]] = [("held-out data", reference[:80])]
    n_curve = min(cfg["n_curve"], n)  # the curve's floor: the same two held-out halves at the curve's size
    result["curve_floor"] = metrics.compare(floor_sample[:n_curve], reference[:n_curve])["frechet"]["value"]
    print(f"{data}: {x.shape[0]} training images, floor {result['floor']['frechet']:.4f}", flush=True)

    # 1. equal CPU time ---------------------------------------------------------------------------------------
    d = cfg["latent_dim"]
    start = time.perf_counter()
    ae = autoencoder(data, shape, d)
    ae.fit(x, steps=cfg["ae_steps"], batch_size=cfg["ae_batch"], quiet=True)
    ae_seconds = time.perf_counter() - start
    recon = {"held_out_mse": ae.reconstruction_error(reference), "train_mse": ae.reconstruction_error(x[:n])}
    result["autoencoder"] = {"latent_dim": d, "steps": cfg["ae_steps"], "seconds": ae_seconds, **recon}
    for name, kind in (("latent SGM", "sgm"), ("latent SB (case H)", "follmer")):
        def build(kind: str = kind) -> sbridge.LatentBridge:
            return sbridge.LatentBridge(ae, latent_solver(kind, d), train_autoencoder=False)

        def fit(model: sbridge.LatentBridge, steps: int, **extra: Any) -> Any:
            return model.fit(x, cond=y, steps=steps, batch_size=256, lr=2e-3, lr_schedule="cosine", quiet=True,
                             **extra)

        steps, per_step = steps_for(build, fit, cfg["budget"] - ae_seconds, long=100 * STAGES)
        model, curve = build(), Curve(metrics, reference, cfg["n_curve"], offset=ae_seconds)
        curve.start(model)
        fit(model, steps, evaluate=curve, eval_every=max(steps // CURVE_POINTS, 1))
        seconds = curve.elapsed()
        s = score(model, metrics, reference, n)
        grids.append((f"{name}, d*={d}", s.pop("grid")))
        result["methods"][name] = {"steps": steps, "train_seconds": seconds, "step_ms": 1000 * per_step, **s,
                                   "curve": curve.points}
        print(f"  {name}: {steps} steps, {seconds:.0f} s, FD {s['frechet']:.4f}", flush=True)
    for name, kind in (("pixel SGM (UNet)", "sgm"), ("pixel VSDM diag (UNet)", "vsdm")):
        def build(kind: str = kind) -> sbridge.Solver:
            return pixel_solver(kind, shape, cfg["unet"])

        def fit(model: sbridge.Solver, steps: int, **extra: Any) -> Any:
            return model.fit(x, cond=y, steps=steps, batch_size=128, lr=1e-3, lr_schedule="cosine", quiet=True,
                             **extra)

        steps, per_step = steps_for(build, fit, cfg["budget"])
        model, curve = build(), Curve(metrics, reference, cfg["n_curve"])
        curve.start(model)
        fit(model, steps, evaluate=curve, eval_every=max(steps // CURVE_POINTS, 1))
        seconds = curve.elapsed()
        s = score(model, metrics, reference, n)
        grids.append((name, s.pop("grid")))
        nll = negative_log_likelihood(model, reference[: cfg["nll_n"]], dequantize=cfg["levels"])
        result["nll"][name] = {"bits_per_dim": nll["bits_per_dim"], "se_nats": nll["se"], "n": nll["n"],
                               "nfe": nll["nfe"]}
        result["methods"][name] = {"steps": steps, "train_seconds": seconds, "step_ms": 1000 * per_step, **s,
                                   "curve": curve.points}
        print(f"  {name}: {steps} steps, {seconds:.0f} s, FD {s['frechet']:.4f}, {nll['bits_per_dim']:.3f} bits/dim",
              flush=True)
    plots.plot_image_grids(grids, RESULTS / f"images_{data.replace('-', '_')}.png", nrow=10,
                           title=f"{data}: class-conditional samples after {cfg['budget']:.0f} s of CPU training "
                                 "(one class per column; measured)")

    # 2. latent dimension sweep -----------------------------------------------------------------------------
    latent_steps = cfg["sweep_steps"]
    if quick:
        latent_steps //= 10
    for dim in (4, 8, 16, 32):
        start = time.perf_counter()
        sweep_ae = autoencoder(data, shape, dim)
        model = sbridge.LatentBridge(sweep_ae, latent_solver("sgm", dim))
        model.fit(x, cond=y, steps=latent_steps, autoencoder_steps=cfg["ae_steps"], batch_size=256, lr=2e-3,
                  lr_schedule="cosine", quiet=True, autoencoder_options={"batch_size": cfg["ae_batch"]})
        seconds = time.perf_counter() - start
        s = score(model, metrics, reference, n)
        s.pop("grid")
        mse = sweep_ae.reconstruction_error(reference)
        result["latent_sweep"][str(dim)] = {"seconds": seconds, "held_out_mse": mse, "latent_steps": latent_steps,
                                            **s}
        print(f"  d*={dim}: FD {s['frechet']:.4f}, reconstruction {mse:.4f}", flush=True)

    # 4. distribution shift: the target is classes 5-9; the autoencoder is pretrained on them, on 0-4, or on all
    if not cfg["shift"]:
        return result
    target = (5, 6, 7, 8, 9)
    xt, yt = images.load(data, "train", classes=target)
    ref_t, floor_t = _reference_and_floor({**spec_of(data), "classes": list(target)}, cfg["n_eval"])
    result["shift"] = {"floor": metrics.compare(floor_t, ref_t)["frechet"]["value"], "n_eval": ref_t.shape[0]}
    for name, pre in (("pretrained on 5-9 (target)", target), ("pretrained on 0-4 (shifted)", (0, 1, 2, 3, 4)),
                      ("pretrained on all classes", None)):
        xp = images.load(data, "train", classes=pre)[0]
        shift_ae = autoencoder(data, shape, d)
        shift_ae.fit(xp, steps=cfg["ae_steps"], batch_size=cfg["ae_batch"], quiet=True)
        model = sbridge.LatentBridge(shift_ae, latent_solver("sgm", d), train_autoencoder=False)
        model.fit(xt, cond=yt, steps=latent_steps, batch_size=256, lr=2e-3, lr_schedule="cosine", quiet=True)
        s = score(model, metrics, ref_t, ref_t.shape[0], classes=target)
        s.pop("grid")
        result["shift"][name] = {"held_out_mse": shift_ae.reconstruction_error(ref_t), **s}
        print(f"  {name}: FD {s['frechet']:.4f}", flush=True)
    return result


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Images: latent vs pixel space", ""]
    for data, r in results["data"].items():
        fl = r["floor"]["frechet"]
        lines += [f"## {data}", "", f"Measured: {r['machine']}, `{r['command']}`.", "",
                  f"{r['n_train']} training images; {r['n_eval']} samples scored against as many held-out images. "
                  f"Classifier test accuracy {r['classifier_accuracy']:.4f}; classifier Fréchet floor {fl:.4f} "
                  f"(KID floor {r['floor']['kid']:.4f}). Budget {r['budget_seconds']:.0f} s of training per "
                  f"method; latent methods include the autoencoder ({r['autoencoder']['seconds']:.0f} s, d* = "
                  f"{r['autoencoder']['latent_dim']}, held-out reconstruction MSE "
                  f"{r['autoencoder']['held_out_mse']:.4f}).", "",
                  "| method | steps | train s | FD | FD / floor | KID | label acc. | sampling s (100 steps) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in r["methods"].items():
            lines.append(f"| {name} | {m['steps']} | {m['train_seconds']:.0f} | {m['frechet']:.4f} | "
                         f"{m['frechet'] / fl:.2f} | {m['kid']:.4f} | {m['label_accuracy']:.3f} | "
                         f"{m['sample_seconds']:.1f} |")
        if "curve_floor" in r:
            lines += ["", f"Along training (classifier Fréchet distance ÷ its floor {r['curve_floor']:.4f} at "
                          "the curve's sample size, 50-step SDE samples; seconds of training, evaluations excluded):",
                      ""]
            for name, m in r["methods"].items():
                pts = ", ".join(f"{p['seconds']:.0f} s: {p['frechet'] / r['curve_floor']:.2f}"
                                for p in m.get("curve", []))
                lines.append(f"- {name}: {pts}")
        lines += ["", "| d* | seconds | held-out recon. MSE | FD | FD / floor | label acc. |",
                  "|---|---|---|---|---|---|"]
        for dim, m in r["latent_sweep"].items():
            lines.append(f"| {dim} | {m['seconds']:.0f} | {m['held_out_mse']:.4f} | {m['frechet']:.4f} | "
                         f"{m['frechet'] / fl:.2f} | {m['label_accuracy']:.3f} |")
        lines += ["", "| pixel solver | NLL bits/dim (dequantised) | NFE | points |", "|---|---|---|---|"]
        for name, m in r["nll"].items():
            lines.append(f"| {name} | {m['bits_per_dim']:.3f} | {m['nfe']} | {m['n']} |")
        sh = r.get("shift")
        if sh is None:
            lines.append("")
            continue
        lines += ["", f"Distribution shift, target classes 5-9 (floor {sh['floor']:.4f}, {sh['n_eval']} images):", "",
                  "| autoencoder | held-out recon. MSE (5-9) | FD | FD / floor | label acc. |", "|---|---|---|---|---|"]
        for name, m in sh.items():
            if isinstance(m, dict):
                lines.append(f"| {name} | {m['held_out_mse']:.4f} | {m['frechet']:.4f} | "
                             f"{m['frechet'] / sh['floor']:.2f} | {m['label_accuracy']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(data: str, r: dict[str, Any]) -> Path:
    """The classifier Fréchet distance (÷ floor) against training seconds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in r["methods"].items():
        pts = m.get("curve") or []
        ax.plot([p["seconds"] for p in pts], [p["frechet"] / r["curve_floor"] for p in pts], marker="o", label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds (2 CPU cores; latent: autoencoder included)")
    ax.set_ylabel("classifier Fréchet distance / floor")
    ax.set_title(f"{data}: quality against CPU time (measured)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"images_{data.replace('-', '_')}_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["digits", "fashion-mnist"], choices=images.DATASETS)
    parser.add_argument("--quick", action="store_true", help="a tenth of every budget (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(exist_ok=True)
    for data in args.data:
        try:
            r = run_data(data, args.quick)
        except sbridge.SBridgeError as exc:
            print(f"{data}: skipped ({exc})")
            continue
        r["machine"] = machine
        r["command"] = f"python benchmarks/bench_images.py --data {data}" + (" --quick" if args.quick else "")
        (RESULTS / f"images_{data.replace('-', '_')}{suffix}.json").write_text(json.dumps(r, indent=2))
        if r["methods"] and "curve_floor" in r:
            plot_curves(data, r)
    results = {"data": {}}
    for data in images.DATASETS:  # the markdown gathers every data set measured so far
        file = RESULTS / f"images_{data.replace('-', '_')}{suffix}.json"
        if file.is_file():
            results["data"][data] = json.loads(file.read_text())
    (RESULTS / f"images{suffix}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
