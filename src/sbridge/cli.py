"""The ``sbridge`` command line: a thin argparse layer over :mod:`sbridge.runs`.

User mistakes raise :class:`sbridge.SBridgeError`; :func:`main` prints the one-sentence message without a
traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

from sbridge.core.errors import ConfigError, SBridgeError
from sbridge.solvers.base import SOLVERS
from sbridge.training.trainer import TrainConfig

DEMO_OUT = "runs/demo"
#: The flagship demo's model and training (measured against the plain MLP in benchmarks/bench_sgm.py): an MLP with
#: Fourier features of the 2-D input, which draws the squares' edges sharp (README, "What the demo shows").
DEMO_SOLVER = {"process": "vp", "net": {"name": "mlp", "hidden": 128, "depth": 3, "fourier_bands": 6,
                                        "fourier_period": 8.0}}
DEMO_STEPS = 20_000
DEMO_TRAINING = {"batch_size": 512, "lr": 2e-3, "lr_schedule": "cosine"}
IMAGE_DEMO_OUT = "runs/demo-images"


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path!r} does not exist; pass the path of a YAML file.")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} is not a text file; pass a YAML file of option: value "
                          "lines.") from None
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path!r} is not valid YAML ({first_line}); fix its syntax.") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of option: value, not {type(cfg).__name__}.")
    bad = [k for k in cfg if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config file {path!r} has a key {bad[0]!r} that is not a name; option names are words "
                          "such as steps or batch_size.")
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def _yaml_value(text: str) -> Any:
    """A ``--set`` value read as YAML (numbers, booleans, lists and mappings), or the plain string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set value {text!r} is not valid YAML; quote strings and write mappings as "
                          "{key: value}.") from None


def _add_sampling_args(p: argparse.ArgumentParser, n: int, labels: bool = True) -> None:
    p.add_argument("run", help="run directory written by 'sbridge train'")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=n,
                   help=f"number of samples (default {n}; under torchrun write --num-samples)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the solver's, 100 for SGM)")
    p.add_argument("--ode", action="store_true", help="probability-flow ODE instead of the reverse SDE")
    p.add_argument("--ode-method", default="heun", help="euler, heun (default) or an adaptive torchdiffeq method "
                                                         "(dopri5, bosh3, adaptive_heun, dopri8)")
    p.add_argument("--grid", default="uniform",
                   help="time grid of the sampler (SGM): uniform (default), edm or logsnr")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed (default: the run's own, derived from its training seed)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    if not labels:
        return
    p.add_argument("--label", type=int, default=None,
                   help="class-conditional runs: draw every sample of this class (default: the classes in turn)")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance weight w of class-conditional runs (trained with cond_drop > 0)")


class _Parser(argparse.ArgumentParser):
    """argparse with sbridge's error format: one ``sbridge: error:`` sentence pointing to ``--help``, exit 2."""

    def error(self, message: str) -> Any:
        command = self.prog.removeprefix("sbridge").strip()
        helper = f"sbridge {command} --help" if command else "sbridge --help"
        self.exit(2, f"sbridge: error: {message}; see '{helper}'.\n")


TRAIN_HELP = {
    "method": "solver: " + ", ".join(SOLVERS),
    "prior": "second data set for a bridge (toy set or file): the bridge then connects --data to it",
    "iterations": "outer IPF / IMF iterations of a bridge solver (0: its default)",
    "data": "a toy data set (checkerboard, 8gaussians, moons, swissroll, spiral, pinwheel, circles, scurve, "
            "gaussian), an image data set (digits, fashion-mnist: all its training images) or a .npy / .csv file of "
            "shape (n, d)",
    "n_data": "points drawn from a toy data set",
    "latent_dim": "train an autoencoder with latents of this dimension first and run the method in its latent space "
                  "(with --method autoencoder: the autoencoder's latent dimension)",
    "ae_steps": "training steps of the autoencoder stage of a latent run",
    "out": "run directory",
    "eval_every": "evaluate the EMA model every this many steps (0: never)",
    "loss_growth": "when the loss grows 1000-fold over its lowest value: warn, stop or ignore",
    "shards": "draw each global batch in this many shards, one generator each (0: one per process); a run's "
              "result depends on it, not on the number of processes",
    "precision": "fp32, or bf16 (autocast of the loss, meant for GPUs)",
    "log_every": "write the mean training loss to metrics.jsonl every this many steps",
    "grad_clip": "clip the gradient's norm to this (0: no clipping)",
}


def build_parser() -> argparse.ArgumentParser:
    from sbridge.runs.spec import RunSpec

    parser = _Parser(prog="sbridge", description="Schrödinger-bridge generative modelling.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a solver on a data set and write a run directory")
    defaults = RunSpec()
    t.add_argument("--config", help="YAML file of options (keys as below, with underscores); flags override it")
    train_keys = {f.name for f in fields(TrainConfig)}
    for f in sorted(fields(RunSpec), key=lambda f: f.name in train_keys):  # the run's own options first
        if f.name in ("quiet", "resume", "overwrite", "solver", "prior", "class_cond", "classes", "data_path",
                      "latent"):
            continue
        kind = type(getattr(defaults, f.name))
        t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None, help=TRAIN_HELP.get(f.name, "")
                       + f" (default {getattr(defaults, f.name)})")
    t.add_argument("--prior", default=None, help=TRAIN_HELP["prior"])
    t.add_argument("--class-cond", action="store_true", default=None,
                   help="image data: train class-conditional on the labels (add --set cond_drop=0.1 for guidance)")
    t.add_argument("--classes", default=None, help="image data: keep only these labels, e.g. 0,1,2,3,4")
    t.add_argument("--data-path", default=None, help="folder of the Fashion-MNIST IDX files (default: the Debian "
                                                     "package's, /usr/share/datasets/fashion-mnist)")
    t.add_argument("--latent", default=None, metavar="RUN",
                   help="run the method in the latent space of this trained autoencoder run (sbridge train --method "
                        "autoencoder)")
    t.add_argument("--process", help="reference process for SGM, SB-FBSDE and SB-VAE: vp (default), ve or brownian")
    t.add_argument("--sigma", type=float, help="reference noise of a bridge solver (sigma^2 per unit time)")
    t.add_argument("--hidden", type=int, help="network width (default 128)")
    t.add_argument("--depth", type=int, help="number of hidden layers (default 3)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a solver option, e.g. --set cond_drop=0.1 or --set 'process={name: ve, sigma_max: 20}' "
                        "(the value is read as YAML; repeat for several)")
    t.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    t.add_argument("--resume", action="store_true", default=None,
                   help="continue the run found in --out (same settings; only --steps and logging may change)")
    t.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the run found in --out (without it a folder holding a run is refused)")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    _add_sampling_args(s, 10_000)
    s.add_argument("--out", default=None, help="output .npy file (default RUN/samples.npy)")

    e = sub.add_parser("evaluate", help="score samples against fresh data, each metric beside its noise floor")
    _add_sampling_args(e, 5_000)
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--nll", action="store_true",
                   help="also report the exact negative log-likelihood of fresh data (nats/dim and bits/dim)")
    e.add_argument("--nll-n", type=int, default=1_000, help="data points for --nll (default 1000)")
    e.add_argument("--dequantize", type=int, default=None, metavar="LEVELS",
                   help="images with LEVELS intensity levels in [0, 1]: dequantise uniformly for --nll (e.g. 256)")

    p = sub.add_parser("plot", help="write PNG plots (samples, trajectories, loss) into RUN/plots")
    _add_sampling_args(p, 4_000, labels=False)

    d = sub.add_parser("demo", help="the flagship run: SGM on checkerboard, with plots and metrics")
    d.add_argument("--out", default=None, help=f"run directory (default {DEMO_OUT}, {IMAGE_DEMO_OUT} with --images)")
    d.add_argument("--steps", type=int, default=None, help="training steps (default 8000; 4000 with --images)")
    d.add_argument("--images", action="store_true",
                   help="the image demo instead: a class-conditional latent SGM (autoencoder, then SGM on its codes)")
    d.add_argument("--data", default="digits", help="image data set of --images: digits (default) or fashion-mnist")
    d.add_argument("--device", default="auto")
    d.add_argument("--quiet", action="store_true")
    return parser


def _train_spec(args: argparse.Namespace):
    from sbridge.runs.spec import RunSpec

    cfg = _load_yaml(args.config) if args.config else {}
    solver = cfg.pop("solver", None) or {}
    if not isinstance(solver, dict):
        raise ConfigError(f"'solver' in the config file must be a mapping of solver options (e.g. solver: {{sigma: "
                          f"0.5}}), got {solver!r}.")
    solver = dict(solver)
    flagged = set()
    for key in ("process", "hidden", "depth", "sigma"):
        if key in cfg:
            solver[key] = cfg.pop(key)
        if getattr(args, key) is not None:
            solver[key] = getattr(args, key)
            flagged.add(key)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}; e.g. --set sigma=0.5.")
        key = key.strip().replace("-", "_")
        if key in flagged or (key == "net" and flagged & {"hidden", "depth"}):
            flag = key if key in flagged else "hidden/--depth"
            raise ConfigError(f"solver option {key!r} is given twice, by --set and by --{flag}; give it once.")
        solver[key] = _yaml_value(value)
    for f in fields(RunSpec):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "solver":
            cfg[f.name] = _class_list(value) if f.name == "classes" else value
    if isinstance(cfg.get("classes"), str):
        cfg["classes"] = _class_list(cfg["classes"])
    return RunSpec.from_dict({**cfg, "solver": solver})


def _class_list(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` as a list of labels."""
    labels: list[int] = []
    try:
        for part in str(text).split(","):
            lo, sep, hi = part.strip().partition("-")
            labels += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise ConfigError(f"--classes must list labels like 0,1,2 or a range like 0-4, got {text!r}.") from None
    return labels


def cmd_train(args: argparse.Namespace) -> int:
    from sbridge import runs
    from sbridge.training import distributed

    spec = _train_spec(args)
    ctx = distributed.init_from_env(spec.device)
    if ctx.active:
        spec.device = str(distributed.local_device(spec.device))
    solver = runs.train(spec)
    if not ctx.is_main:
        return 0
    target = f" -> {spec.prior}" if spec.prior else ""
    done, loss = solver.steps_done, solver.last_loss
    if solver.capabilities().closed_form:
        how = "in closed form (no training steps)"
    else:
        how = f"for {done} steps" + (f" (final loss {loss:.4g})" if loss is not None and loss == loss else "")
    print(f"trained {spec.method} on {spec.data}{target} {how}; run written to {spec.out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from sbridge import runs

    out = Path(args.out) if args.out else Path(args.run) / "samples.npy"
    if out.suffix.lower() != ".npy":
        raise ConfigError(f"--out {str(out)!r} must name a .npy file (samples are saved with numpy.save); e.g. "
                          f"--out {out.with_suffix('.npy')}.")
    from sbridge.training import distributed

    ctx = distributed.init_from_env(args.device)
    x, nfe = runs.sample(args.run, args.n, steps=args.steps, ode=args.ode, method=args.ode_method, grid=args.grid,
                         seed=args.seed, device=distributed.local_device(args.device) if ctx.active else args.device,
                         label=args.label, guidance=args.guidance)
    if not ctx.is_main:
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    from sbridge.core import io

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append a second .npy
            np.save(fh, x.numpy())

    io.atomic_write(out, write)
    print(f"wrote {args.n} samples of shape {tuple(x.shape[1:])} to {out} ({nfe} network evaluations)")
    return 0


def _format_metrics(result: dict[str, Any]) -> str:
    lines = [f"{'metric':<10} {'value':>11} {'noise floor':>12} {'ratio':>7}"]
    for name, m in result["metrics"].items():
        ratio = m["value"] / m["floor"] if m["floor"] > 0 else float("inf")
        lines.append(f"{name:<10} {m['value']:>11.5f} {m['floor']:>12.5f} {ratio:>7.2f}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sbridge import runs

    if not args.nll and (args.dequantize is not None or args.nll_n != 1_000):
        raise ConfigError("--nll-n and --dequantize set up the likelihood; add --nll, or drop them.")

    result = runs.evaluate(args.run, args.n, steps=args.steps, ode=args.ode, method=args.ode_method, grid=args.grid,
                           seed=args.seed, device=args.device, nll=args.nll, nll_n=args.nll_n,
                           dequantize=args.dequantize, label=args.label, guidance=args.guidance)
    if args.json:
        print(json.dumps(result, indent=2))
    elif "reconstruction_mse" in result:
        r = result["reconstruction_mse"]
        print(f"{result['run']}: autoencoder with d* = {result['latent_dim']}; reconstruction error (mean squared, per "
              f"pixel) {r['held_out']:.5f} on {result['n']} held-out {result['data']} images, {r['training']:.5f} on "
              "as many training images")
    else:
        print(f"{result['run']}: {result['n']} points from the {'ODE' if args.ode else 'SDE'} sampler "
              f"({result['nfe']} network evaluations) against fresh {result['data']} data")
        print(_format_metrics(result))
        if "classifier_accuracy" in result and result["classifier_accuracy"] is not None:
            seen = result["training_images"]
            print(f"features: a classifier trained on {result['data']} (test accuracy "
                  f"{result['classifier_accuracy']:.4f}), not Inception: these are not FIDs. The floor compares two "
                  f"halves of the held-out images; real training images score frechet {seen['frechet']:.3f}, kid "
                  f"{seen['kid']:.3f} (the classifier has seen them).")
        if "label_accuracy" in result:
            print(f"samples the classifier assigns to the class they were drawn with: {result['label_accuracy']:.4f}")
        if "displacement" in result:
            d = result["displacement"]
            print(f"mean squared displacement {d['transport']:.4f} (random pairing of {result['source']} with "
                  f"{result['data']}: {d['random_pairing']:.4f})")
        if "nll" in result:
            r = result["nll"]
            where = " of their latent codes (latent nats, not a likelihood of the images)" if r["space"] == "latent" \
                else ""
            print(f"NLL{where} of {r['n']} fresh data points (exact, probability-flow ODE, {r['nfe']} network "
                  f"evaluations): {r['nats_per_dim']:.4f} ± {r['se']:.4f} nats/dim = {r['bits_per_dim']:.4f} bits/dim")
            if "bound" in r:
                b = r["bound"]
                print(f"negative ELBO (path-space bound on the reverse SDE's NLL): {b['nats_per_dim']:.4f} ± "
                      f"{b['se']:.4f} nats/dim = {b['bits_per_dim']:.4f} bits/dim")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from sbridge import runs

    for path in runs.plot(args.run, n=args.n, steps=args.steps, ode=args.ode, device=args.device):
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sbridge import runs
    from sbridge.core.validation import check_positive_int
    from sbridge.runs.spec import RunSpec

    if args.images:
        return _image_demo(args)
    if args.data != "digits":
        raise ConfigError("--data chooses the image data set of --images; add --images, or drop --data.")
    steps = DEMO_STEPS if args.steps is None else check_positive_int(args.steps, "--steps")
    out = Path(args.out or DEMO_OUT)
    spec = RunSpec(method="sgm", data="checkerboard", n_data=20_000, steps=steps, out=str(out), device=args.device,
                   quiet=args.quiet, resume=(out / "checkpoint.safetensors").exists(), eval_every=max(steps // 8, 1),
                   solver=json.loads(json.dumps(DEMO_SOLVER)), **DEMO_TRAINING)  # a copy: the spec may fill it
    print(f"sbridge demo: training a score-based diffusion (VP SDE) on the 2-D checkerboard for {steps} steps "
          f"into {out} ...", flush=True)
    runs.train(spec)
    plots = runs.plot(out, steps=100, device=args.device)
    sde = runs.evaluate(out, 5_000, steps=100, device=args.device)
    ode = runs.evaluate(out, 5_000, steps=50, ode=True, device=args.device)
    from sbridge.core import io

    io.write_json(out / "evaluation.json", {"sde": sde, "ode": ode})
    print(f"\nSamples from the reverse SDE ({sde['nfe']} network evaluations):")
    print(_format_metrics(sde))
    print(f"\nSamples from the probability-flow ODE, Heun ({ode['nfe']} network evaluations):")
    print(_format_metrics(ode))
    print("\nEach metric compares 5000 model samples with 5000 fresh data points; the noise floor is the same metric "
          "between two independent data samples, so a ratio near 1 means the model is as close to the data as the "
          "data is to itself.")
    print("Plots: " + ", ".join(str(p) for p in plots))
    print(f"Metrics: {out / 'evaluation.json'} and the training log {out / 'metrics.jsonl'}")
    print(f"Next: sbridge sample {out} --n 10000 --ode   |   sbridge evaluate {out} --json")
    return 0


def _image_demo(args: argparse.Namespace) -> int:
    """A class-conditional latent SGM on digits (or Fashion-MNIST): autoencoder stage, latent stage, evaluation with
    the classifier Fréchet distance, plots."""
    from sbridge import runs
    from sbridge.core import io
    from sbridge.core.validation import check_choice, check_positive_int
    from sbridge.data import images
    from sbridge.runs.spec import RunSpec

    data = check_choice(args.data, images.DATASETS, "image data set")
    steps = 4_000 if args.steps is None else check_positive_int(args.steps, "--steps")
    out = Path(args.out or IMAGE_DEMO_OUT)
    latent_dim = 8 if data == "digits" else 16
    spec = RunSpec(method="sgm", data=data, steps=steps, out=str(out), device=args.device, quiet=args.quiet,
                   resume=(out / "config.json").exists(), class_cond=True, latent_dim=latent_dim,
                   ae_steps=2_000 if data == "digits" else 4_000, batch_size=256, lr=2e-3, lr_schedule="cosine",
                   solver={"cond_drop": 0.1, "hidden": 256, "depth": 3})
    print(f"sbridge demo --images: an autoencoder with {latent_dim}-dimensional codes, then a class-conditional "
          f"score-based diffusion on the codes ({steps} steps), on {data}, into {out} ...", flush=True)
    runs.train(spec)
    result = runs.evaluate(out, 2_000, steps=100, device=args.device)
    guided = runs.evaluate(out, 2_000, steps=100, device=args.device, guidance=1.0)
    plots = runs.plot(out, steps=100, device=args.device)
    io.write_json(out / "evaluation.json", {"sde": result, "sde_guidance_1": guided})
    print(f"\nSamples from the reverse SDE in latent space ({result['nfe']} network evaluations), decoded, against "
          f"{result['n']} held-out images:")
    print(_format_metrics(result))
    print(f"with guidance w = 1: frechet {guided['metrics']['frechet']['value']:.4f}; samples of the drawn class "
          f"{guided['label_accuracy']:.3f} (without guidance {result['label_accuracy']:.3f})")
    print(f"\nFeatures come from a classifier trained here on {data} (test accuracy "
          f"{result['classifier_accuracy']:.4f}): classifier Fréchet distance and KID, not FID. The floor compares "
          "two halves of the held-out images.")
    print("Plots: " + ", ".join(str(p) for p in plots))
    print(f"Next: sbridge sample {out} --n 64 --label 3   |   sbridge evaluate {out} --guidance 2")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "plot": cmd_plot, "demo": cmd_demo}


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    """Print sbridge's own warnings as one line (others keep Python's format)."""
    from sbridge.core.errors import SBridgeWarning

    if issubclass(category, SBridgeWarning):
        print(f"sbridge: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end="")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0")) if os.environ.get("RANK", "0").isdigit() else 0
    if rank and args.command not in ("train", "sample"):
        return 0  # under torchrun, evaluate / plot / demo run on rank 0 only
    who = f"sbridge (rank {rank})" if rank else "sbridge"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except SBridgeError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (a folder that cannot be written, a full disk, ...)
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"sbridge: error: the file system refused{where} ({exc.strerror or exc}); choose a path you can write "
              "to, or free some space.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sbridge: interrupted; the last checkpoint is kept, continue with --resume.", file=sys.stderr)
        return 130
    finally:
        if "sbridge.training.distributed" in sys.modules:  # leave a process group joined under torchrun
            sys.modules["sbridge.training.distributed"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
