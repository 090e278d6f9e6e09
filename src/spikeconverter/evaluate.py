"""Evaluation: the numbers users judge a converter by, for one T (``evaluate``) or a curve (``sweep``).

Calibration always uses *training* images (a fixed random subset); accuracies are measured on test
images (all of them, or a fixed random subset with ``limit``). Nothing is tuned on the test set.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from . import distributed
from .convert import calibration_options, check_args, convert
from .data import load_dataset
from .device import resolve as resolve_device
from .methods import method_named
from .metrics import ENERGY_CONVENTION, CostModel, Report, counting_bytes_per_image, neuron_spike_counts, report
from .reports import format_evaluate, format_sweep, plot_sweep, write_json
from .workload import (
    SELECTION_IMAGES,
    batches_of,
    calibration_data,
    data_digest,
    file_ref,
    fixed_subset,
    held_out_training,
    load_model,
    sized_kwargs,
)

# what evaluate's callers import from here (the CLI, benchmarks, scripts): the loaders and the texts
__all__ = ["PRECISIONS", "SELECTION_IMAGES", "batches_of", "calibration_data", "data_digest", "evaluate", "file_ref",
           "fixed_subset", "format_evaluate", "format_sweep", "held_out_training", "load_dataset", "load_model",
           "plot_sweep", "resolve_precision", "sized_kwargs", "sweep", "write_json"]

CALIBRATION_KEYS = ("per_channel", "sequential", "bias_correction")
# Spike counting holds every spiking layer's state for a whole batch at once
# (metrics.counting_bytes_per_image): 250 CIFAR images stay far below this budget; 250 photos at
# 128 px with beta = 1 needed ~10 GB and, beside a training job, were OOM-killed. Batches are cut to
# fit; per-image results do not depend on the batch.
COUNTING_MEMORY_BYTES = 2 * 2**30
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The arithmetic evaluate and sweep measure in. Default (None): float64, because float32
    convolution kernels round differently on different CPUs (and thread counts can change the
    order of sums), which moves calibrated thresholds and flips a few of 10,000 test decisions:
    only float64 figures are the same on every machine. MPS has no float64: float32 there."""
    if precision is None:
        return "float32" if device.type == "mps" else "float64"
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float64" and device.type == "mps":
        raise ValueError("MPS has no float64: use --precision float32 (or --device cpu)")
    return precision


def _plain(theta):
    """A threshold for JSON: a number, or per channel a list."""
    return theta.flatten().tolist() if hasattr(theta, "flatten") else theta


def _progress(it, desc, total, quiet):
    if quiet:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, total=total, leave=False)


class _Accumulator:
    """Running sums of correct answers and of per-image cost figures over batches."""

    def __init__(self):
        self.n = 0
        self.correct = 0
        self.sums: dict = {}
        self.per_layer: dict = {}

    @staticmethod
    def record(logits, y, rep: Report | None) -> dict:
        """One batch's contribution (what ``add`` adds): plain numbers, so ranks can exchange it."""
        b = len(y)
        rec = {"n": b, "correct": int((logits.argmax(1) == y).sum()), "sums": {}, "per_layer": {}}
        if rep is not None:
            for k in ("spikes", "sops", "snn_macs", "ann_macs", "energy_snn_uj", "energy_ann_uj"):
                rec["sums"][k] = getattr(rep, k) * b
            for k, v in rep.spikes_per_layer.items():
                rec["per_layer"][k] = v * b
        return rec

    def add_record(self, rec: dict) -> None:
        self.n += rec["n"]
        self.correct += rec["correct"]
        for k, v in rec["sums"].items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        for k, v in rec["per_layer"].items():
            self.per_layer[k] = self.per_layer.get(k, 0.0) + v

    def add(self, logits, y, rep: Report | None):
        self.add_record(self.record(logits, y, rep))

    def add_in_order(self, records: list) -> None:
        """Records of (batch index, record) from this rank; with torchrun, every rank's, added up
        in batch order -- the same sums, in the same order, as one process makes."""
        for rec in distributed.gather_in_order(records):
            self.add_record(rec)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(1, self.n)

    def figures(self) -> dict:
        d = {k: v / self.n for k, v in self.sums.items()}
        d["spikes_per_layer"] = {k: v / self.n for k, v in self.per_layer.items()}
        if d.get("energy_snn_uj"):
            d["energy_ratio"] = d["energy_ann_uj"] / d["energy_snn_uj"]
        return d


def _ann_accuracy(model, ds, batch_size, quiet) -> float:
    acc, records = _Accumulator(), []
    param = next(model.parameters())
    with torch.no_grad():
        batches = _progress(batches_of(ds, batch_size, param.device), "ANN", math.ceil(len(ds) / batch_size), quiet)
        for i, (x, y) in enumerate(batches):
            if distributed.mine(i):
                records.append((i, acc.record(model(x.to(param.dtype)), y, None)))
    acc.add_in_order(records)
    return acc.accuracy


def evaluate(model: str = "resnet20", dataset: str = "cifar10", timesteps: int | None = None, beta=2.0,
             method: str = "spikeconverter", engine: str = "fast", checkpoint: str | None = None,
             limit: int | None = None, calibration: int = 512, threshold: str | None = None, phi: float = 0.5,
             data_root=None, batch_size: int = 250, quiet: bool = False, seed: int = 0, compile: bool = True,
             download: bool = False, per_channel=None, sequential=None, bias_correction=None,
             snn: str | None = None, device: str | None = None, precision: str | None = None,
             energy_model: str = "default", data_free: bool | str = False, max_loss: float | None = None,
             latency: int | None = None, selection_images: int | None = None) -> dict:
    """Convert ``model`` and measure ANN and SNN accuracy, latency, spikes, SOPs, MACs and energy.
    ``compile``: the fused exact quantizer kernel for the fast path (same results, faster).
    ``per_channel``, ``sequential``, ``bias_correction``: as in convert() (None: its defaults).
    ``timesteps``: T (default 8; with ``snn``, the file's); per layer, a list in layer order or a
    dict {layer name: T}; or "auto" with ``max_loss`` (pp) or ``latency`` (steps): T per layer chosen
    on ``selection_images`` (default 4,096) held-out training images (allocate.py), never test images.
    ``device``: auto (CUDA, else MPS, else CPU; the default), cpu, cuda, cuda:N, mps.
    ``data_free``: no calibration image: True or "synthesised", 128 inputs synthesised from the
    model's batch-norm statistics (datafree.py; ``calibration`` is then unused); "bn-statistics",
    thresholds from the statistics themselves (bn_thresholds.py).
    ``energy_model``: "default" (energy.py's hardware cost model, beside the 45 nm operation count),
    "ops-only" (the count alone), or a JSON/TOML file of energy.py parameters.
    ``precision``: the arithmetic of conversion and measurement, float64 (the default; float32 on
    MPS, which has none) or float32 (~3x faster on a CPU). In float64 the fast path and the
    time-stepped simulation agree digit for digit (accuracy, spikes, SOPs) and the figures are the
    same on every machine; in float32 a pre-activation that lies within rounding of a code level can
    round to either side, so the two engines, and two CPUs, may differ in a few digits
    (docs/method.md, "What exact means").
    ``snn``: a network file (``snn.save``, ``spikeconverter convert/finetune --out``) to measure as it
    is, nothing converted; its model and dataset come from the file, the ANN it is compared with is
    ``checkpoint`` or the shipped one."""
    if engine not in ("fast", "simulate"):
        raise ValueError(f"--engine must be fast or simulate, got {engine!r}")
    params = _energy_params(energy_model)  # a bad file fails before any work
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    dtype = PRECISIONS[precision]
    if snn is None and checkpoint is not None and Path(checkpoint).suffix == ".snn":
        snn, checkpoint = checkpoint, None  # a network file (convert/finetune --out) given as the checkpoint
    if snn is not None:
        out, net_file = _evaluate_file(snn, timesteps, engine, checkpoint, limit, data_root, batch_size, quiet, seed,
                                       compile, download, dataset, dev, dtype)
        return _with_energy(dict(out, precision=precision), net_file, params)
    timesteps = 8 if timesteps is None else timesteps
    auto = timesteps == "auto"
    _check_evaluate_args(timesteps, max_loss, latency, beta, threshold, method, phi, calibration, selection_images)
    options = calibration_options(method, per_channel, sequential, bias_correction)
    if not method_named(method).exact_twin and engine == "fast":
        engine = "simulate"  # the rate baseline has no exact shortcut
    net, info = load_model(model, dataset, checkpoint)
    net = net.to(device=dev, dtype=dtype)  # convert() keeps the model's precision
    test = fixed_subset(load_dataset(dataset, "test", data_root, download=download, **sized_kwargs(dataset, info)), limit, seed)
    free_method = _data_free_method(data_free)
    calib = "data-free" if data_free else calibration_data(dataset, calibration, data_root, seed, download=download,
                                                           **sized_kwargs(dataset, info))
    budget = {}
    if auto:
        selection = None if data_free else held_out_training(dataset, selection_images or SELECTION_IMAGES, calibration,
                                                             data_root, seed, download=download, **sized_kwargs(dataset, info))
        budget = dict(max_loss=max_loss, latency=latency, selection=selection)
    t0 = time.time()
    snn = distributed.shared_network(  # torchrun: converted once, on rank 0; the others load its file
        lambda: convert(net, calib, timesteps=timesteps, beta=beta, threshold=threshold, method=method, phi=phi,
                        progress=not quiet, input_shape=tuple(test[0][0].shape) if data_free else None,
                        **({"data_free_method": free_method} if data_free else {}),
                        **budget, **dict(zip(CALIBRATION_KEYS, options))))
    out = {"model": model, "dataset": dataset,
           **_measure(snn, net, info, test, 0 if data_free else len(calib), engine, batch_size, quiet, compile, t0)}
    out.update(phi=phi, calibration_options=dict(zip(CALIBRATION_KEYS, options)), precision=precision, seed=seed)
    if data_free:
        out["data_free"] = snn.calibration.get("data_free")
    if "timesteps_search" in snn.calibration:
        out["timesteps_search"] = snn.calibration["timesteps_search"]
    return _with_energy(out, snn, params)


def _check_evaluate_args(timesteps, max_loss, latency, beta, threshold, method, phi, calibration,
                         selection_images=None) -> None:
    """Bad input fails before any loading."""
    auto = timesteps == "auto"
    if selection_images is not None and not auto:
        raise ValueError("selection_images (--selection) is for -T auto")
    if not auto and (max_loss is not None or latency is not None):
        raise ValueError("--max-loss / --latency are budgets for -T auto")
    if auto and (max_loss is None) == (latency is None):
        raise ValueError("-T auto needs one budget: --max-loss PP (shortest latency within it) or --latency STEPS "
                         "(best accuracy within it)")
    check_args(8 if auto else timesteps, beta, threshold, method, phi, "analog")
    if calibration < 1:
        raise ValueError(f"--calibration must be >= 1, got {calibration}")


def _data_free_method(data_free) -> str | None:
    """True / "synthesised" / "bn-statistics" -> the convert() method name; False/None -> None."""
    if not data_free:
        return None
    method = "synthesised" if data_free is True else data_free
    if method not in ("synthesised", "bn-statistics"):
        raise ValueError(f"--data-free must be synthesised or bn-statistics, got {data_free!r}")
    return method


def _energy_params(energy_model: str):
    """None for the ops-only proxy, else the cost model's parameters (defaults or a file)."""
    from .energy import EnergyParams

    if energy_model == "ops-only":
        return None
    if energy_model == "default":
        return EnergyParams()
    if not Path(energy_model).is_file():
        raise ValueError(f"--energy-model must be default, ops-only or a parameter file; {energy_model} is none")
    return EnergyParams.from_file(energy_model)


def _with_energy(out: dict, snn, params) -> dict:
    """The cost model's figures from the measured per-image events (two-phase networks)."""
    if params is None or not snn.scheme.pipelined:  # the cost model is of a two-phase pipeline
        return out
    from .energy import energy_report, events_of
    from .metrics import Report

    rep = Report({}, out["spikes"], out["sops"], out["snn_macs"], out["ann_macs"], 0.0, 0.0, snn.timesteps,
                 snn.latency_steps, snn.steps_per_input, snn.method)
    out["energy_model"] = energy_report(events_of(snn, rep), params)
    return out


def _evaluate_file(path, timesteps, engine, checkpoint, limit, data_root, batch_size, quiet, seed, compile, download,
                   dataset, dev, dtype=torch.float32):
    from .serialize import load

    t0 = time.time()
    snn = load(path).to(device=dev, dtype=dtype)
    src = getattr(snn, "source", {}) or {}
    if timesteps is not None and timesteps != snn.timesteps:
        raise ValueError(f"{Path(path).name} was converted for T = {snn.timesteps}; drop -T or convert again")
    model, dataset = src.get("model"), src.get("dataset") or dataset
    if model is None:  # a network from a user's own model: compare with its folded float graph
        net, info = snn.ann(), {"checkpoint": None, "image_size": src.get("image_size")}
    else:
        net, info = load_model(model, dataset, checkpoint)
    net = net.to(device=dev, dtype=dtype)
    if not snn.scheme.exact_twin and engine == "fast":
        engine = "simulate"
    test = fixed_subset(load_dataset(dataset, "test", data_root, download=download, **sized_kwargs(dataset, info)), limit, seed)
    out = {"model": model, "dataset": dataset,
           **_measure(snn, net, info, test, src.get("calibration_images"), engine, batch_size, quiet, compile, t0)}
    out.update(phi=snn.layers[0].phi if snn.layers else None, snn_file=file_ref(path),
               source_checkpoint=src.get("checkpoint"),
               calibration_options={k: v for k, v in (getattr(snn, "calibration", None) or {}).items()
                                    if k in CALIBRATION_KEYS})
    if (getattr(snn, "calibration", None) or {}).get("data_free"):  # converted without images
        out["data_free"] = snn.calibration["data_free"]
    if "finetune" in src:
        ft = src["finetune"]
        out["finetune"] = {"epochs": ft.get("epoch"), "config": ft.get("config"),
                           "train_loss": [h["loss"] for h in ft.get("history", [])]}
    return out, snn


def counting_batch(snn, cost: CostModel, batch_size: int) -> int:
    """The largest batch <= batch_size whose spike counting fits COUNTING_MEMORY_BYTES."""
    return max(1, min(batch_size, COUNTING_MEMORY_BYTES // counting_bytes_per_image(snn, cost)))


def _measure(snn, net, info, test, n_calib, engine, batch_size, quiet, compile, t0) -> dict:
    """ANN and SNN accuracy and the cost figures of a converted network on ``test``."""
    if compile:
        from .neuron import compiled_kernel

        # the fused kernel serves float32 only (built on first use): a float64 run builds nothing
        if compiled_kernel is None and not quiet and next(snn.parameters()).dtype == torch.float32:
            print("compiling the fused quantizer once (about 25 s on first use on this machine) ...", flush=True)
        snn.compile()
    t_convert = time.time() - t0
    ann_acc = _ann_accuracy(net, test, batch_size, quiet)
    cost = CostModel(snn.plan, snn.input_shape, snn.input_coding)
    batch_size = counting_batch(snn, cost, batch_size)
    acc, records = _Accumulator(), []
    t0 = time.time()
    device, dtype = next(snn.parameters()).device, next(snn.parameters()).dtype
    with torch.no_grad():
        batches = _progress(batches_of(test, batch_size, device), f"SNN ({engine})", math.ceil(len(test) / batch_size),
                            quiet)
        for i, (x, y) in enumerate(batches):
            if not distributed.mine(i):  # torchrun: batch i is rank (i mod N)'s
                continue
            x = x.to(dtype)  # the network's precision (counting reads the graph directly)
            if engine == "fast":
                counts, logits = neuron_spike_counts(snn, x, return_logits=True)
            else:
                res = snn.simulate(x, neuron_counts=True)
                counts, logits = res.extra["neuron_counts"], res.logits
            records.append((i, acc.record(logits, y, report(snn, x, counts, cost))))
    acc.add_in_order(records)
    t_snn = time.time() - t0
    out = {
        "data": getattr(test, "source", ""), "data_sha256": data_digest(test), "checkpoint": info["checkpoint"],
        "method": snn.method, "engine": engine, "timesteps": snn.timesteps,
        **({} if snn.uniform else {"timesteps_per_layer": snn.timesteps_per_layer}),
        "beta": snn.layers[0].beta if snn.layers else None,
        "beta_per_group": {str(k): v for k, v in snn.betas.items()}, "threshold": snn.threshold,
        "test_images": len(test), "calibration_images": n_calib,
        "ann_accuracy": ann_acc, "snn_accuracy": acc.accuracy, "difference_pp": acc.accuracy - ann_acc,
        "spiking_depth": snn.spiking_depth, "latency_steps": snn.latency_steps, "steps_per_input": snn.steps_per_input,
        "energy_convention": ENERGY_CONVENTION, "seconds_convert": t_convert, "seconds_snn": t_snn,
        "device": _device_name(device),
        "layers": [dict(name=la.name, theta=_plain(la.theta), beta=la.beta, neurons=la.neurons, depth=la.depth,
                        calibration_mse=la.error) for la in snn.layers],
    }
    out.update(acc.figures())
    if distributed.active():
        out["processes"] = distributed.world_size()
    return out


def _device_name(device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def sweep(model: str = "resnet20", dataset: str = "cifar10", timesteps=(2, 3, 4, 5, 6, 8),
          rate_timesteps=(16, 32, 64, 128, 256, 512), beta=2.0, checkpoint=None, limit=None, rate_limit=None,
          calibration: int = 512, data_root=None, batch_size: int = 250, quiet: bool = False, seed: int = 0,
          extra_betas=(), extra_beta_timesteps=None, compile: bool = True, download: bool = False,
          per_channel=None, sequential=None, bias_correction=None, device: str | None = None,
          progress_file=None, data_free: bool | str = False, precision: str | None = None) -> dict:
    """Accuracy, latency and spikes vs T for our method (each T converted anew) and the rate
    baseline (one simulation of max(rate_timesteps) steps, read at every requested T).

    extra_betas are ablation rows (e.g. beta = 1: temporal separation without iLIF), run at
    extra_beta_timesteps (default: the same T as the main rows).

    ``data_free``: no calibration image; 128 inputs synthesised once from the model's batch-norm
    statistics (datafree.py) calibrate every row.

    ``precision``: as in evaluate() (float64 by default: the same figures on every machine).

    ``progress_file``: a JSON file the sweep writes after every finished row and reads when it
    starts again, so that a long sweep (hours for 224-px photos on a CPU) that is stopped resumes
    where it stopped. Rows are taken from it only if it was written for the same model, checkpoint,
    data, images, calibration and options; otherwise it is started afresh. Single-process runs only
    (ignored under torchrun)."""
    extra_beta_timesteps = tuple(timesteps if extra_beta_timesteps is None else extra_beta_timesteps)
    _check_sweep_args(timesteps, rate_timesteps, beta, extra_betas, extra_beta_timesteps, calibration)
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    net, info = load_model(model, dataset, checkpoint)
    net = net.to(device=dev, dtype=PRECISIONS[precision])
    test = fixed_subset(load_dataset(dataset, "test", data_root, download=download, **sized_kwargs(dataset, info)), limit, seed)
    rate_test = fixed_subset(test, rate_limit, seed) if rate_limit else test
    free_method = _data_free_method(data_free)
    calib, convert_kw, synthesised = _sweep_calibration(net, test, dataset, info, data_free, free_method, calibration,
                                                        data_root, seed, download, quiet)
    options = dict(zip(CALIBRATION_KEYS, calibration_options("spikeconverter", per_channel, sequential, bias_correction)))
    progress = _Progress(progress_file, dict(
        model=model, dataset=dataset, checkpoint=info["checkpoint"], data=getattr(test, "source", ""),
        test_images=len(test), rate_images=len(rate_test), limit=limit, rate_limit=rate_limit, seed=seed,
        calibration=("data-free" + ("" if free_method == "synthesised" else f" {free_method}")) if data_free else calibration,
        options=options, beta=beta, precision=precision))
    ann_acc = progress.value("ann_accuracy", lambda: _ann_accuracy(net, test, batch_size, quiet))
    ann_acc_rate = ann_acc if rate_test is test else progress.value(
        "ann_accuracy_rate_images", lambda: _ann_accuracy(net, rate_test, batch_size, quiet))
    rows = []
    for b in (beta,) + tuple(extra_betas):
        for T in (timesteps if b == beta else extra_beta_timesteps):
            method = "spikeconverter" if b == beta else f"spikeconverter beta={b:g}"
            if (done := progress.row(method, T)) is not None:
                rows.append(done)
                continue
            snn = distributed.shared_network(lambda: convert(net, calib, timesteps=T, beta=b, **options, **convert_kw))
            if free_method == "bn-statistics" and synthesised is None:
                synthesised = snn.calibration["data_free"]
            snn.compile(compile)
            f, accuracy = _measure_rows(snn, test, {T: None}, batch_size, f"beta={b:g} T={T}", quiet)[T]
            rows.append(_sweep_row(method, b, T, snn.latency_steps, f, accuracy, ann_acc, len(test)))
            progress.add(rows[-1])
    done_rate = [progress.row("rate", t) for t in rate_timesteps]
    if rate_timesteps and all(r is not None for r in done_rate):
        rows += done_rate
    elif rate_timesteps:
        tmax = max(rate_timesteps)
        rate = distributed.shared_network(lambda: convert(net, calib, timesteps=tmax, method="rate", **convert_kw))
        measured = _measure_rows(rate, rate_test, {t: PRECISIONS[precision] for t in rate_timesteps}, batch_size,
                                 f"rate T<={tmax}", quiet)
        for t in rate_timesteps:
            rows.append(_sweep_row("rate", 1.0, t, t, *measured[t], ann_acc_rate, len(rate_test)))
            progress.add(rows[-1])
    return {"model": model, "dataset": dataset, "data": getattr(test, "source", ""), "data_sha256": data_digest(test),
            "checkpoint": info["checkpoint"],
            "image_size": info.get("image_size"),
            "ann_accuracy": ann_acc, "ann_accuracy_rate_images": ann_acc_rate, "test_images": len(test),
            "rate_images": len(rate_test), "calibration_images": 0 if data_free else len(calib),
            "calibration_options": options, "precision": precision, "energy_convention": ENERGY_CONVENTION,
            **({"data_free": synthesised} if data_free else {}), "rows": rows}


def _sweep_row(method, beta, T, latency, f: dict, accuracy: float, ann_accuracy: float, images: int) -> dict:
    return dict(method=method, beta=beta, timesteps=T, latency_steps=latency, accuracy=accuracy,
                difference_pp=accuracy - ann_accuracy, spikes=f["spikes"], sops=f["sops"],
                energy_snn_uj=f["energy_snn_uj"], energy_ratio=f["energy_ratio"], images=images)


def _check_sweep_args(timesteps, rate_timesteps, beta, extra_betas, extra_beta_timesteps, calibration) -> None:
    for T in tuple(timesteps) + extra_beta_timesteps:
        check_args(T, beta, None, "spikeconverter", 0.5, "analog")
    for T in rate_timesteps:
        check_args(T, 1.0, None, "rate", 0.0, "analog")
    for b in extra_betas:
        check_args(1, b, None, "spikeconverter", 0.5, "analog")
    if calibration < 1:
        raise ValueError(f"--calibration must be >= 1, got {calibration}")


def _sweep_calibration(net, test, dataset, info, data_free, free_method, calibration, data_root, seed, download, quiet):
    """What every row of a sweep converts from: (calibration, extra convert() arguments, the
    synthesis report or None)."""
    if free_method == "bn-statistics":  # each row's thresholds from the statistics (no input to share)
        return "data-free", dict(input_shape=tuple(test[0][0].shape), data_free_method=free_method, seed=seed), None
    if data_free:  # once for every row: the rows then differ by T alone, as with images
        from .datafree import synthesize_inputs

        calib, synthesised = synthesize_inputs(net, tuple(test[0][0].shape), seed=seed, progress=not quiet)
        return calib, {}, synthesised
    return calibration_data(dataset, calibration, data_root, seed, download=download, **sized_kwargs(dataset, info)), {}, None


def _measure_rows(snn, test, rows: dict, batch_size: int, label: str, quiet: bool) -> dict:
    """Accuracy and the report's figures of ``snn`` on ``test``: {T: (figures, accuracy)}. Two-phase:
    ``rows`` = {its T: None}, the fast path. Rate: ``rows`` = {T: dtype} for every T read from one
    simulation of the longest (its thresholds do not depend on T, so each shorter run is a prefix)."""
    dev = next(snn.gm.parameters()).device
    cost = CostModel(snn.plan, snn.input_shape)
    accs = {t: _Accumulator() for t in rows}
    records = {t: [] for t in rows}
    rate = not snn.scheme.exact_twin  # measured by simulating the longest T once
    bs = batch_size if rate else counting_batch(snn, cost, batch_size)
    if rate:
        from .engine import RateSimulator

        sim, tmax = RateSimulator(snn.plan), max(rows)
    with torch.no_grad():
        for i, (x, y) in enumerate(_progress(batches_of(test, bs, dev), label, math.ceil(len(test) / bs), quiet)):
            if not distributed.mine(i):
                continue
            if not rate:
                (t,) = rows
                counts, logits = neuron_spike_counts(snn, x, return_logits=True)
                records[t].append((i, accs[t].record(logits, y, report(snn, x, counts, cost))))
                continue
            x = x.to(rows[tmax])  # the simulator reads the graph directly

            def at(t, logits, counts, x=x, y=y, i=i):
                snn.timesteps = t  # the report's latency and MAC accounting use the current T
                records[t].append((i, accs[t].record(logits, y, report(snn, x, counts, cost))))

            sim.run(x, tmax, checkpoints=tuple(rows), on_checkpoint=at)
    if rate:
        snn.timesteps = tmax
    for t in rows:
        accs[t].add_in_order(records[t])
    return {t: (accs[t].figures(), accs[t].accuracy) for t in rows}


class _Progress:
    """A sweep's finished rows on disk (``sweep(progress_file=...)``), kept only for the same setup."""

    def __init__(self, path, key: dict):
        # one process only: under torchrun, ranks that read different files would wait on each
        # other's collectives for rows only some of them compute
        self.path = Path(path) if path and not distributed.active() else None
        self.key = json.loads(json.dumps(key, default=str))  # as it reads back from the file
        self.state = {"key": self.key, "values": {}, "rows": []}
        if self.path and self.path.exists():
            old = json.loads(self.path.read_text())
            if old.get("key") == self.key:
                self.state = old
                print(f"sweep: resuming from {self.path} ({len(old['rows'])} rows done)", flush=True)
            else:
                print(f"sweep: {self.path} was written for another setup; starting afresh", flush=True)

    def value(self, name: str, compute):
        if name not in self.state["values"]:
            self.state["values"][name] = compute()
            self._write()
        return self.state["values"][name]

    def row(self, method: str, timesteps: int) -> dict | None:
        return next((r for r in self.state["rows"] if r["method"] == method and r["timesteps"] == timesteps), None)

    def add(self, row: dict) -> None:
        same = (row["method"], row["timesteps"])
        self.state["rows"] = [r for r in self.state["rows"] if (r["method"], r["timesteps"]) != same] + [row]
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")  # a kill mid-write leaves the old file
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        tmp.replace(self.path)
