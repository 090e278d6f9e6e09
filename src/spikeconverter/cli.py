"""The ``spikeconverter`` command line."""

from __future__ import annotations

import argparse
import sys

from . import distributed


def _train(args) -> int:
    from pathlib import Path

    from .train import TrainConfig, train

    if args.resume and not Path(args.out).exists():
        print(f"--resume: {args.out} does not exist yet; starting from scratch", file=sys.stderr)

    cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                      label_smoothing=args.label_smoothing, seed=args.seed, bf16=not args.no_bf16,
                      data_root=args.data, download=args.download, threads=args.threads, image_size=args.image_size,
                      device=args.device)
    try:
        meta = train(cfg, args.out, resume=args.resume, progress=not args.quiet, export=args.export,
                     half_export=args.half, stop_after=args.stop_after, limit=args.limit, test_limit=args.test_limit)
    except KeyboardInterrupt:
        from .checkpoint import read_metadata

        done = read_metadata(Path(args.out)).get("epoch", 0) if Path(args.out).exists() else 0
        print(f"interrupted; {args.out} keeps the run after epoch {done} (continue with --resume)", file=sys.stderr)
        return 130
    if distributed.rank() == 0:
        print(f"{cfg.model}/{cfg.dataset}: epoch {meta['epoch']}/{meta['epochs']}, test accuracy {meta['test_acc']:.2f}%")
    return 0


def _positive(name):
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {v!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {n}")
        return n

    return parse


def _timesteps(v: str):
    """-T: an integer, one per spiking layer (comma-separated, in layer order), or "auto"."""
    if v == "auto":
        return "auto"
    try:
        values = [int(t) for t in v.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"-T must be an integer, integers per layer (4,3,3,...) or 'auto', "
                                         f"got {v!r}") from None
    if any(t < 1 for t in values):
        raise argparse.ArgumentTypeError(f"-T values must be >= 1, got {v!r}")
    return values[0] if len(values) == 1 and "," not in v else values


def _budgets(p) -> None:
    p.add_argument("--max-loss", type=float, default=None, metavar="PP",
                   help="with -T auto: the shortest latency within PP points of the float ANN's accuracy")
    p.add_argument("--latency", type=_positive("--latency"), default=None, metavar="STEPS",
                   help="with -T auto: the best accuracy within STEPS end-to-end steps")
    p.add_argument("--selection", type=_positive("--selection"), default=None, metavar="N",
                   help="with -T auto: held-out training images the budget is judged on (default 4096; the "
                        "judged loss's standard error shrinks as 1/sqrt(N), the search's time grows as N)")


def _T_text(T) -> str:
    return "auto" if T == "auto" else (",".join(map(str, T)) if isinstance(T, list) else str(T))


def _evaluate(args) -> int:
    from .evaluate import evaluate
    from .reports import format_evaluate, write_json

    snn = getattr(args, "snn", None)
    if getattr(args, "finetuned", False):
        from .models import shipped_network

        if snn is not None or args.T is None:
            raise ValueError("--finetuned takes --model, --dataset and -T (not --snn)")
        path = shipped_network(args.model, args.dataset, args.T)
        if path is None:
            raise ValueError(f"no fine-tuned {args.model}/{args.dataset} network for T = {args.T} is shipped")
        snn = str(path)
    T = args.T if args.T is not None else (None if snn else 8)
    r = evaluate(model=args.model, dataset=args.dataset, timesteps=T, beta=_beta(args.beta), method=args.method,
                 engine=args.engine, checkpoint=args.checkpoint, limit=args.limit, calibration=args.calibration,
                 threshold=args.threshold, phi=args.phi, data_root=args.data, quiet=args.quiet,
                 compile=not args.no_compile, download=args.download, snn=snn, device=args.device,
                 precision=args.precision, energy_model=args.energy_model, data_free=args.data_free,
                 max_loss=args.max_loss, latency=args.latency, selection_images=args.selection, seed=args.seed,
                 **_calibration(args))
    if distributed.rank() == 0:  # torchrun: every rank holds the same numbers; one reports them
        print(format_evaluate(r))
        if args.json:
            write_json(r, args.json)
    return 0


def _make_parent_folders(*paths) -> None:
    """Output folders are made before the work, so that a long run cannot fail at its last step."""
    from pathlib import Path

    for path in paths:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sweep(args) -> int:
    from .evaluate import sweep
    from .reports import format_sweep, plot_sweep, write_json

    if args.plot:  # a bad file name fails now, not after the whole sweep
        from matplotlib.figure import Figure

        fmt = args.plot.rsplit(".", 1)[-1].lower() if "." in args.plot else ""
        supported = Figure().canvas.get_supported_filetypes()
        if fmt not in supported:
            raise ValueError(f"--plot {args.plot}: unknown image format {fmt!r}; use one of {', '.join(sorted(supported))}")
    _make_parent_folders(args.plot, args.json, args.progress)

    r = sweep(model=args.model, dataset=args.dataset, timesteps=tuple(args.T), rate_timesteps=tuple(args.rate_T),
              beta=_beta(args.beta), checkpoint=args.checkpoint, limit=args.limit, rate_limit=args.rate_limit,
              calibration=args.calibration, data_root=args.data, quiet=args.quiet,
              extra_betas=tuple(float(b) for b in args.also_beta),
              extra_beta_timesteps=tuple(args.also_beta_T) if args.also_beta_T else None,
              compile=not args.no_compile, download=args.download, device=args.device,
              progress_file=args.progress, data_free=args.data_free, precision=args.precision, **_calibration(args))
    if distributed.rank() == 0:  # torchrun: every rank holds the same numbers; one reports them
        print(format_sweep(r))
        if args.json:  # the measurement first: a plot that fails must not lose it
            write_json(r, args.json)
        if args.plot:
            plot_sweep(r, args.plot)
    return 0


def _model_and_calibration(args):
    """(the model with its weights on --device, its metadata, the calibration images -- or
    "data-free" with --data-free): what every converting command starts from."""
    from .device import resolve
    from .workload import calibration_data, load_model, sized_kwargs

    net, info = load_model(args.model, args.dataset, args.checkpoint)
    dev = resolve(args.device)
    net = net.to(dev)  # converted where it will run; a network file itself is device-free
    if hasattr(args, "precision"):  # convert / show / export: float64 unless asked, like evaluate (the same thresholds anywhere)
        from .evaluate import PRECISIONS, resolve_precision

        net = net.to(PRECISIONS[resolve_precision(args.precision, dev)])
    if getattr(args, "data_free", None):
        return net, info, "data-free"
    calib = calibration_data(args.dataset, args.calibration, args.data, download=args.download,
                             **sized_kwargs(args.dataset, info))
    return net, info, calib


def _input_shape(args, info) -> tuple:
    """One sample's shape for a zoo model on its dataset (the side its checkpoint was trained at)."""
    from .data import DATASETS

    d = DATASETS[args.dataset]
    side = info.get("image_size") or d.image_size
    return (d.channels, side, side)


def _converted(args, net, calib, **kw):
    """convert() with the command's T, beta and calibration options (the rate baseline takes none)."""
    from . import convert
    from .methods import method_named

    scheme = method_named(kw.get("method", "spikeconverter"))
    options = {k: v for k, v in _calibration(args).items() if v is not None} if scheme.calibration_options else {}
    if args.T == "auto":  # judged on held-out training images (none with --data-free)
        from .workload import SELECTION_IMAGES, held_out_training, load_model, sized_kwargs

        kw.update(max_loss=args.max_loss, latency=args.latency)
        if not isinstance(calib, str):
            info = load_model(args.model, args.dataset, args.checkpoint)[1]
            kw["selection"] = held_out_training(args.dataset, args.selection or SELECTION_IMAGES, args.calibration,
                                                args.data,
                                                download=args.download, **sized_kwargs(args.dataset, info))
    elif args.max_loss is not None or args.latency is not None or args.selection is not None:
        raise ValueError("--max-loss / --latency / --selection are for -T auto")
    if isinstance(calib, str):  # --data-free (show has no such option)
        kw["data_free_method"] = getattr(args, "data_free", None)
    return convert(net, calib, timesteps=args.T, beta=_beta(args.beta), progress=not args.quiet, **options, **kw)


def _show(args) -> int:
    from .data import load_dataset
    from .plot import pipeline
    from .workload import sized_kwargs

    if "." not in args.out or args.out.rsplit(".", 1)[-1].lower() not in ("png", "pdf", "svg"):
        raise ValueError(f"--out {args.out}: use a .png, .pdf or .svg file name")
    net, info, calib = _model_and_calibration(args)
    test = load_dataset(args.dataset, "test", args.data, **sized_kwargs(args.dataset, info))
    if not 0 <= args.image < len(test):
        raise ValueError(f"--image must be in [0, {len(test) - 1}], got {args.image}")
    x = test[args.image][0].unsqueeze(0)
    snn = _converted(args, net, calib, method=args.method)
    pipeline(snn, x, args.out)
    print(f"wrote {args.out}: {args.model} ({args.method}, T = {_T_text(args.T)}), test image {args.image}")
    return 0


def _source(args, info: dict, n_calib: int | None) -> dict:
    """What a network file records about where it came from (names and hashes, no paths)."""
    return {"model": args.model, "dataset": args.dataset, "checkpoint": info.get("checkpoint"),
            "image_size": info.get("image_size"), "calibration_images": n_calib}


def _convert(args) -> int:
    net, info, calib = _model_and_calibration(args)
    data_free = isinstance(calib, str)
    snn = _converted(args, net, calib, method=args.method, threshold=args.threshold, phi=args.phi,
                     **({"input_shape": _input_shape(args, info)} if data_free else {}))
    snn.save(args.out, extra=_source(args, info, 0 if data_free else len(calib)))
    print(f"wrote {args.out}: {args.model} ({args.method}, T = {_T_text(args.T)}"
          + ("" if snn.uniform else f": {snn.timesteps_per_layer}")
          + f", {len(snn.layers)} spiking layers, latency "
          f"{snn.latency_steps} steps); measure it with: spikeconverter evaluate --snn {args.out}")
    return 0


def _export(args) -> int:
    import numpy as np

    from .data import load_dataset
    from .workload import batches_of, fixed_subset, sized_kwargs

    net, info, calib = _model_and_calibration(args)
    snn = _converted(args, net, calib, fixed_point=True,
                     **({"input_shape": _input_shape(args, info)} if isinstance(calib, str) else {}))
    out = snn.export(args.out)
    note = ""
    if args.samples:  # inputs and the fixed-point engine's answers: a test bench's reference
        test = fixed_subset(load_dataset(args.dataset, "test", args.data, **sized_kwargs(args.dataset, info)), args.samples, 0)
        x, y = next(batches_of(test, args.samples))
        np.save(out / "inputs.npy", x.double().numpy())
        np.save(out / "labels.npy", y.numpy())
        try:
            np.save(out / "expected_logits.npy", snn(x).cpu().numpy())
            note = f"; {args.samples} test images with the engine's logits (inputs.npy, expected_logits.npy)"
        except ValueError as e:  # beyond float64's exact range the engine refuses; the int64 executor may not
            note = f"; {args.samples} test images in inputs.npy (no expected logits: {str(e).splitlines()[0]})"
    print(f"wrote the integer bundle of {args.model} (T = {_T_text(args.T)}, latency {snn.latency_steps} steps) to {out}{note}. "
          f"Run it without torch: python {out}/run.py {out} {out}/inputs.npy")
    return 0


def _finetune(args) -> int:
    from pathlib import Path

    from .data import load_dataset
    from .device import resolve
    from .finetune import FinetuneConfig, finetune
    from .train import balanced_subset
    from .workload import calibration_data, fixed_subset, load_model, sized_kwargs

    if args.T == "auto":
        raise ValueError("finetune takes T per layer as numbers: choose them with `evaluate -T auto --max-loss PP` "
                         "(it prints them) and pass -T 4,3,3,...")
    net, info = load_model(args.model, args.dataset, args.checkpoint)
    net = net.to(resolve(args.device))
    sized = sized_kwargs(args.dataset, info)
    train = load_dataset(args.dataset, "train", args.data, download=args.download, **sized)
    if args.train_limit is not None:
        train = balanced_subset(train, args.train_limit, args.seed)
    test = fixed_subset(load_dataset(args.dataset, "test", args.data, **sized), args.limit, args.seed)
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, theta_lr=args.theta_lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay, seed=args.seed, distill=args.distill,
                         train_weights=not args.freeze_weights)
    resume = args.resume and Path(args.out).exists()
    calib = None if resume else calibration_data(args.dataset, args.calibration, args.data, download=args.download,
                                                 **sized)
    snn = finetune(net, train, timesteps=args.T, epochs=args.epochs, calibration=calib, eval_data=test, out=args.out,
                   resume=resume, progress=not args.quiet, stop_after=args.stop_after, config=cfg,
                   source=_source(args, info, None if calib is None else len(calib)), beta=_beta(args.beta),
                   **_calibration(args))
    hist = snn.calibration["finetune"]["history"]
    last = hist[-1] if hist else {}
    print(f"{args.model} fine-tuned at T = {_T_text(args.T)}: epoch {snn.calibration['finetune']['epoch']}/{args.epochs}"
          + (f", test accuracy (exact twin, {len(test)} images) {last['eval_acc']:.2f} %" if "eval_acc" in last else "")
          + f"; wrote {args.out} (evaluate it with: spikeconverter evaluate --snn {args.out})")
    return 0


def _calibration(args) -> dict:
    return {k: getattr(args, k, None) for k in ("per_channel", "sequential", "bias_correction")}


def _import_checkpoint(args) -> int:
    from .checkpoint import import_checkpoint

    n = import_checkpoint(args.src, args.out)
    print(f"wrote {n} tensors to {args.out} (read with weights_only=True)")
    return 0


def _demo(args) -> int:
    # the evaluate command as its parser builds it (every option present, with its default), then
    # the demo's own options on top: a new evaluate option can never be missing here
    ev = build_parser().parse_args(["evaluate", "--model", "resnet20", "--dataset", "cifar10", "-T", "8"])
    vars(ev).update({k: v for k, v in vars(args).items() if k not in ("func", "command")})
    print("spikeconverter demo: shipped ResNet-20 (CIFAR-10) converted at T = 8, beta = 2; "
          + (f"{args.limit} test images" if args.limit else "full test set") + ", exact fast path\n")
    return _evaluate(ev)


def _beta(b: str):
    if b == "search":
        return "search"
    try:
        return float(b)
    except ValueError:
        raise ValueError(f"--beta must be a number in [1, 2] or 'search', got {b!r}") from None


def _runtime_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (after the subcommand's name, where users type them)."""
    r = argparse.ArgumentParser(add_help=False)
    g = r.add_argument_group("runtime")
    g.add_argument("--threads", type=_positive("--threads"), default=None,
                   help="CPU threads for torch (default: torch's choice); 1 avoids stalls beside another job")
    g.add_argument("--device", default="auto", help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps")
    g.add_argument("--data", default=None, help="dataset root (default: SPIKECONVERTER_DATA, then usual places)")
    g.add_argument("--download", action="store_true",
                   help="CIFAR-10/100: fetch the official release (md5-checked) if no copy is found")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return r


def _precision(p):
    p.add_argument("--precision", choices=["float32", "float64"], default=None,
                   help="arithmetic of conversion and measurement: float64 (default; float32 on MPS) gives the same "
                        "thresholds and figures on every machine and digit-equal engines; float32 is ~3x faster on a "
                        "CPU (convert: the file's precision)")


def _data_free(p) -> None:
    p.add_argument("--data-free", nargs="?", const="synthesised", default=None,
                   choices=["synthesised", "bn-statistics"], metavar="synthesised|bn-statistics",
                   help="convert without any image: calibration inputs synthesised from the model's batch-norm "
                        "statistics (the default: 128 inputs, 300 optimiser steps; --calibration is then unused); "
                        "bn-statistics: each layer's thresholds from the normal its BN statistics describe, no "
                        "input at all where they reach (docs/method.md)")


def _common(p, T_default=8):
    p.add_argument("--model", default="resnet20", help="vgg16, resnet20, resnet34, mobilenet_v2")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, fashion_mnist, imagenet, imagenette")
    p.add_argument("--checkpoint", default=None,
                   help="weights file (default: the shipped checkpoint); evaluate also takes a network file (.snn)")
    p.add_argument("--limit", type=_positive("--limit"), default=None,
                   help="evaluate on a fixed random subset of N test images")
    p.add_argument("--calibration", type=_positive("--calibration"), default=512,
                   help="training images used for calibration")
    p.add_argument("--beta", default="2", help="growth factor in [1, 2], or 'search'")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    p.add_argument("--no-compile", action="store_true",
                   help="do not build the fused quantizer kernel (same results, slower fast path)")
    c = p.add_argument_group("post-training calibration (two-phase method; default: per channel, bias correction)")
    c.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="one threshold per channel (--no-per-channel: one per layer)")
    c.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                   help="choose thresholds depth by depth on the quantized layers' activations")
    c.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="correct each layer's mean pre-activation to the float ANN's")


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (``--help`` shows the usage)."""

    def error(self, message):
        raise _UsageError(f"{self.prog}: {message}")


def _kept_after_interrupt(args) -> str:
    """What a Ctrl-C leaves behind, per command, and how to go on."""
    if args.func is _sweep:
        if args.progress:
            return f"the finished rows are kept in {args.progress}; run the same command again to resume there"
        return "no rows were kept (a sweep run with --progress FILE keeps its finished rows and resumes there)"
    if args.func is _finetune:
        return (f"{args.out} keeps the last finished epoch, if one finished (continue with --resume)")
    if args.func in (_convert, _export):
        return f"nothing was written ({args.out} is written only once the conversion has finished)"
    if args.func is _import_checkpoint:
        return f"nothing was written ({args.out} is written in one step at the end)"
    if args.func is _show:
        return "nothing was written"
    return "nothing was written; the measurement starts afresh when run again"


def _add_train(sub, runtime: list) -> None:
    """The ``train`` subcommand and its options."""
    t = sub.add_parser("train", parents=runtime, help="train a model of the zoo (checkpoint every epoch, --resume)")
    t.add_argument("--model", default="resnet20", help="vgg16, resnet20, resnet34, mobilenet_v2")
    t.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, fashion_mnist, imagenet, imagenette")
    t.add_argument("--epochs", type=_positive("--epochs"), default=60, help="epochs in the whole schedule")
    t.add_argument("--batch-size", type=_positive("--batch-size"), default=128, help="images per SGD step")
    t.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, Nesterov momentum 0.9)")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="L2 on weights (not on BN or biases)")
    t.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle", help="learning-rate schedule")
    t.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    t.add_argument("--no-bf16", action="store_true",
                   help="train in float32 (on CPUs without native bf16, e.g. the 2-core dev box, float32 is faster)")
    t.add_argument("--image-size", type=_positive("--image-size"), default=None,
                   help="imagenette: train and test at this side (default 224; decoded once at side/0.875)")
    t.add_argument("--out", required=True, help="run checkpoint (.safetensors), rewritten every epoch")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--export", default=None, help="also write the final weights here (shippable form)")
    t.add_argument("--half", action="store_true", help="export in float16")
    t.add_argument("--stop-after", type=int, default=None, help="run at most N epochs now (resume later)")
    t.add_argument("--limit", type=_positive("--limit"), default=None,
                   help="train on a fixed random, class-balanced subset of N training images (smoke runs)")
    t.add_argument("--test-limit", type=_positive("--test-limit"), default=None,
                   help="score each epoch on a fixed random subset of N test images (default: all)")
    t.set_defaults(func=_train)


def _add_evaluate(sub, runtime: list) -> None:
    """The ``evaluate`` subcommand and its options."""
    e = sub.add_parser("evaluate", parents=runtime, help="convert a model and report accuracy, latency, spikes, SOPs, energy")
    _common(e)
    e.add_argument("-T", "--timesteps", dest="T", type=_timesteps, default=None,
                   help="time steps per phase (default 8); per layer: 4,3,3,... in layer order; auto: chosen per "
                        "layer for --max-loss or --latency on held-out training images")
    _budgets(e)
    e.add_argument("--snn", default=None, help="measure this network file (convert/finetune --out) as it is: "
                   "no conversion; model and dataset from the file")
    e.add_argument("--finetuned", action="store_true", help="measure the shipped fine-tuned network for --model, "
                   "--dataset and -T (docs/results.md lists them)")
    e.add_argument("--method", choices=["spikeconverter", "rate"], default="spikeconverter")
    e.add_argument("--engine", choices=["fast", "simulate"], default="fast",
                   help="fast: the exact twin; simulate: the time-stepped spiking network")
    e.add_argument("--threshold", default=None, help="mse (default), max, percentile:P")
    e.add_argument("--phi", type=float, default=0.5, help="offset: 0.5 rounds, 0 truncates")
    e.add_argument("--seed", type=int, default=0,
                   help="which random training images calibrate (and judge -T auto), and which test images --limit "
                        "keeps: another seed is another calibration sample (how much a result depends on it)")
    _data_free(e)
    e.add_argument("--energy-model", default="default", metavar="default|ops-only|FILE",
                   help="energy per image: the hardware cost model (default; docs/method.md), the 45 nm operation "
                        "count alone (ops-only), or the model with parameters from a JSON/TOML file")
    _precision(e)
    e.set_defaults(func=_evaluate)


def _add_sweep(sub, runtime: list) -> None:
    """The ``sweep`` subcommand and its options."""
    s = sub.add_parser("sweep", parents=runtime, help="accuracy vs T for our method and the rate baseline (table, plot, JSON)")
    _common(s)
    s.add_argument("-T", "--timesteps", dest="T", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    s.add_argument("--rate-T", type=int, nargs="*", default=[16, 32, 64, 128, 256, 512])
    s.add_argument("--rate-limit", type=_positive("--rate-limit"), default=None, help="test images for the (slow) rate baseline")
    s.add_argument("--also-beta", nargs="*", default=[], help="extra beta values as ablation rows (e.g. 1)")
    s.add_argument("--also-beta-T", nargs="+", type=int, default=None,
                   help="time steps for the --also-beta rows (default: the same as -T)")
    _data_free(s)
    s.add_argument("--plot", default=None, help="write the accuracy-vs-T plot (PNG)")
    s.add_argument("--progress", default=None, metavar="FILE",
                   help="keep finished rows in FILE (JSON) and resume from it when run again with the same "
                        "setup: for sweeps that take hours")
    _precision(s)
    s.set_defaults(func=_sweep)


def _add_show(sub, runtime: list) -> None:
    """The ``show`` subcommand and its options."""
    sh = sub.add_parser("show", parents=runtime, help="draw one input's run: per layer accumulate/generate windows, "
                        "spike rasters, spikes and thresholds")
    _common(sh)
    sh.add_argument("-T", "--timesteps", dest="T", type=_timesteps, default=8,
                    help="time steps per phase; per layer: 4,3,3,... in layer order; auto (with --max-loss or --latency)")
    _budgets(sh)
    sh.add_argument("--method", choices=["spikeconverter", "rate"], default="spikeconverter")
    sh.add_argument("--image", type=int, default=0, help="index of the test image to run")
    sh.add_argument("--out", required=True, help="picture file (.png, .pdf, .svg)")
    _precision(sh)
    sh.set_defaults(func=_show)


def _add_convert(sub, runtime: list) -> None:
    """The ``convert`` subcommand and its options."""
    cv = sub.add_parser("convert", parents=runtime, help="convert a model and save the spiking network to one file (no pickle)")
    _common(cv)
    cv.add_argument("-T", "--timesteps", dest="T", type=_timesteps, default=8,
                    help="time steps per phase; per layer: 4,3,3,... in layer order; auto (with --max-loss or --latency)")
    _budgets(cv)
    cv.add_argument("--method", choices=["spikeconverter", "rate"], default="spikeconverter")
    cv.add_argument("--threshold", default=None, help="mse (default), max, percentile:P")
    cv.add_argument("--phi", type=float, default=0.5, help="offset: 0.5 rounds, 0 truncates")
    _data_free(cv)
    cv.add_argument("--out", required=True, help="the network file to write (e.g. net.snn)")
    _precision(cv)
    cv.set_defaults(func=_convert)


def _add_export(sub, runtime: list) -> None:
    """The ``export`` subcommand and its options."""
    ex = sub.add_parser("export", parents=runtime,
                        help="convert in fixed point and write the integer deployment bundle (docs/deploy.md)")
    _common(ex)
    ex.add_argument("-T", "--timesteps", dest="T", type=_timesteps, default=6,
                    help="time steps per phase; per layer: 4,3,3,... in layer order; auto (with --max-loss or --latency)")
    _budgets(ex)
    ex.add_argument("--samples", type=int, default=8, help="test images saved with the engine's logits (0: none)")
    _data_free(ex)
    ex.add_argument("--out", required=True, help="the bundle folder to write")
    _precision(ex)
    ex.set_defaults(func=_export)


def _add_finetune(sub, runtime: list) -> None:
    """The ``finetune`` subcommand and its options."""
    ft = sub.add_parser("finetune", parents=runtime, help="fine-tune the quantized twin for few time steps (learned thresholds, "
                        "straight-through gradients); writes a network file every epoch")
    _common(ft)
    ft.add_argument("-T", "--timesteps", dest="T", type=_timesteps, default=3,
                    help="time steps per phase, or per layer: 4,3,3,... in layer order (e.g. the T that "
                         "`evaluate -T auto` printed)")
    ft.add_argument("--epochs", type=_positive("--epochs"), default=2, help="epochs (the cosine schedule spans them)")
    ft.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of weights and shifts (cosine to 0)")
    ft.add_argument("--theta-lr", type=float, default=0.002, help="Adam learning rate of the log-thresholds")
    ft.add_argument("--batch-size", type=_positive("--batch-size"), default=128, help="images per step")
    ft.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay on weights (AdamW)")
    ft.add_argument("--seed", type=int, default=0, help="seed of data order and augmentation")
    ft.add_argument("--distill", type=float, default=0.0, metavar="W",
                    help="weight in [0, 1] of matching the float ANN's output distribution (knowledge "
                         "distillation, KL at temperature 1) against the labels' cross-entropy; default 0")
    ft.add_argument("--freeze-weights", action="store_true",
                    help="train only the thresholds and bias corrections (with --distill 1 no labels are used: "
                         "a post-training tuning on a few hundred images, e.g. --train-limit 512)")
    ft.add_argument("--train-limit", type=_positive("--train-limit"), default=None,
                    help="train on a fixed random, class-balanced subset of N training images (smoke runs)")
    ft.add_argument("--out", required=True, help="the network file (rewritten every epoch; optimiser state beside it)")
    ft.add_argument("--resume", action="store_true", help="continue the run in --out")
    ft.add_argument("--stop-after", type=_positive("--stop-after"), default=None,
                    help="run at most N epochs now (resume later)")
    ft.set_defaults(func=_finetune)


def _add_import_checkpoint(sub, runtime: list) -> None:
    """The ``import-checkpoint`` subcommand and its options."""
    ic = sub.add_parser("import-checkpoint", help="convert a torch.save state dict (.pt/.pth) to safetensors, safely")
    ic.add_argument("src", help="the .pt/.pth file (loaded with weights_only=True: no code runs)")
    ic.add_argument("--out", required=True, help="the .safetensors file to write")
    ic.set_defaults(func=_import_checkpoint)


def _add_demo(sub, runtime: list) -> None:
    """The ``demo`` subcommand and its options."""
    d = sub.add_parser("demo", parents=runtime, help="the main job: evaluate the shipped ResNet-20 at T = 8")
    d.add_argument("--limit", type=_positive("--limit"), default=None, help="a fixed random subset of N test images")
    d.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="spikeconverter", description="Convert trained CNNs into spiking networks that compute the "
                "same function (SpikeConverter: temporal separation, iLIF neurons), and measure them.")
    p.add_argument("--threads", type=_positive("--threads"), default=None, dest="global_threads",
                   help="CPU threads for torch (default: torch's choice); 1 avoids stalls beside another job")
    sub = p.add_subparsers(dest="command", required=True)
    runtime = [_runtime_options()]  # options every subcommand that runs a network shares (argparse parents)
    for add in (_add_train, _add_evaluate, _add_sweep, _add_show, _add_convert, _add_export, _add_finetune,
                _add_import_checkpoint, _add_demo):
        add(sub, runtime)
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(f"spikeconverter: error: {e} (see --help)", file=sys.stderr)
        return 2
    threads = getattr(args, "threads", None) or args.global_threads  # after or before the subcommand
    if threads:
        import torch

        torch.set_num_threads(threads)
    if distributed.active():
        if args.func not in (_evaluate, _sweep, _train):
            print(f"spikeconverter: error: {args.command} runs in one process; under torchrun only evaluate, "
                  "sweep and train are distributed", file=sys.stderr)
            return 2
        distributed.setup()
        args.quiet = args.quiet or distributed.rank() != 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        msg = str(e)
        from .data import DatasetError

        if isinstance(e, DatasetError):  # the whole message: the layouts it expects follow the first line
            msg = msg.replace("pass root=...", "pass --data DIR")
        else:
            msg = msg.splitlines()[0] if msg else type(e).__name__
        print(f"spikeconverter: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.func is not _train:  # train says what its checkpoint keeps itself
            print(f"spikeconverter: interrupted; {_kept_after_interrupt(args)}", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
