"""The same checkpoint converted by SpikingJelly 2.0's ann2snn and by spikeconverter, on the same images.

SpikingJelly recipes: RateCodingRecipe (modes "Max" and "99.9%", and the "robust" channel-wise /
half-threshold variant) and LocalThresholdBalancingRecipe, configured and calibrated as SJ's own
example does (50,000 calibration images by default; delayed readout from its estimate_delay_start).
Accuracy at T = 8..512 (one run of max(T) steps, read at each T: its thresholds do not depend on T),
spikes per image, and wall time per image of SJ's multi-step simulation vs our fast path and our
time-stepped engine, all in one run.

Needs the optional extra: `make compare` (SpikingJelly installed with --no-deps, as it pins a
torchvision/torchaudio that do not import beside our torch).

    python benchmarks/vs_spikingjelly.py [--model resnet20] [--dataset cifar10] [--images 1000]
        [--sj-calibration 50000] [--sj-timesteps 8 16 ... 512] [--recipes NAME ...] [--json out.json]

For the ImageNet-shaped networks (`--model resnet34 --dataset imagenette`) every SJ step is a whole
ResNet-34 pass: bound the cost with --sj-timesteps (e.g. 64 256), --recipes and --images.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import spikeconverter as sc
from spikeconverter.data import load_dataset
from spikeconverter.evaluate import batches_of, calibration_data, fixed_subset, load_model, sized_kwargs

import _common

SJ_T = (8, 16, 32, 64, 128, 256, 512)


def spikingjelly_available() -> str | None:
    try:
        import spikingjelly  # noqa: F401
        from spikingjelly.activation_based import ann2snn  # noqa: F401
    except Exception as e:  # missing, or its own imports fail
        return f"{type(e).__name__}: {e}"
    return None


def _sj_recipes(calib_batches):
    """SpikingJelly 2.0's recipes: the two classic rate-coding modes, the "robust" rate coding and
    LocalThresholdBalancing, configured as SJ's own example (examples/imagenet_resnet18_ltb.py) does."""
    from spikingjelly.activation_based import ann2snn

    return {
        'RateCoding "Max"': lambda: ann2snn.RateCodingRecipe(dataloader=calib_batches, mode="Max"),
        'RateCoding "99.9%"': lambda: ann2snn.RateCodingRecipe(dataloader=calib_batches, mode="99.9%"),
        'RateCoding robust ("99.9%", channel-wise, half threshold)': lambda: ann2snn.RateCodingRecipe(
            dataloader=calib_batches, mode="99.9%", fuse_flag=True, channel_wise=True, pre_spike_maxpool=True,
            half_threshold=True),
        "LocalThresholdBalancing": lambda: ann2snn.LocalThresholdBalancingRecipe(dataloader=calib_batches, fuse_flag=True),
    }


def _count_spikes(snn):
    """Forward hooks on SJ's spiking neurons: running total of emitted spikes."""
    from spikingjelly.activation_based import neuron

    total = {"n": 0.0}
    hooks = [m.register_forward_hook(lambda mod, inp, out: total.__setitem__("n", total["n"] + float(out.sum())))
             for m in snn.modules() if isinstance(m, neuron.BaseNode)]
    return total, hooks


QUANTILE_LIMIT = 2**24  # torch.quantile refuses larger inputs; SJ's "99.9%" mode takes it over a whole batch


@torch.no_grad()
def _sj_batches(net, calib, most: int = 128):
    """Calibration batches for SJ's recipes: at most ``most`` images, fewer where a layer's output
    for the batch would pass torch.quantile's size limit (ResNet-34 at 128 px: 64 images)."""
    largest = {"n": 0}

    def hook(mod, inp, out):
        if torch.is_tensor(out):
            largest["n"] = max(largest["n"], out.numel())

    hooks = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    net.eval()(calib[:1])
    for h in hooks:
        h.remove()
    size = max(1, min(most, QUANTILE_LIMIT // max(1, largest["n"])))
    return [(calib[i : i + size], torch.zeros(len(calib[i : i + size]), dtype=torch.long))
            for i in range(0, len(calib), size)]


@torch.no_grad()
def run_spikingjelly(net, calib, test, timesteps=SJ_T, batch_size=250, quiet=False, recipes=None):
    """Each recipe converted once, simulated for max(timesteps) steps; read at every T twice: the
    output summed from step 0, and from SJ's own estimate_delay_start(T) on (delayed readout, as its
    example evaluates LTB and the robust recipe)."""
    from spikingjelly.activation_based import ann2snn, functional

    calib_batches = _sj_batches(net, calib)
    rows = []
    tmax = max(timesteps)
    for name, make in _sj_recipes(calib_batches).items():
        if recipes and name not in recipes:
            continue
        try:
            snn = ann2snn.Converter(recipe=make()).convert(copy.deepcopy(net).eval())
            snn.eval()
            delay = {t: int(ann2snn.estimate_delay_start(snn, calib_batches, "cpu", t)) for t in timesteps}
        except Exception as e:
            rows.append({"recipe": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            continue
        correct = {t: 0 for t in timesteps}
        correct_delayed = {t: 0 for t in timesteps}
        spikes = {t: 0.0 for t in timesteps}
        n = 0
        total, hooks = _count_spikes(snn)
        for x, y in batches_of(test, batch_size):
            functional.reset_net(snn)
            total["n"] = 0.0
            cum = [torch.zeros(len(y), 1)]  # cum[t]: output summed over steps 1..t
            for t in range(1, tmax + 1):
                cum.append(cum[-1] + snn(x))
                if t in correct:
                    correct[t] += int((cum[t].argmax(1) == y).sum())
                    correct_delayed[t] += int(((cum[t] - cum[delay[t]]).argmax(1) == y).sum())
                    spikes[t] += total["n"]
            n += len(y)
        for h in hooks:
            h.remove()
        for t in timesteps:
            rows.append({"recipe": name, "timesteps": t, "accuracy": 100.0 * correct[t] / n, "delay_start": delay[t],
                         "accuracy_delayed": 100.0 * correct_delayed[t] / n, "spikes": spikes[t] / n})
        if not quiet:
            print(f"  {name}: T={tmax} {rows[-1]['accuracy']:.2f} % (delayed readout from step {delay[tmax]}: "
                  f"{rows[-1]['accuracy_delayed']:.2f} %)", flush=True)
    return rows


@torch.no_grad()
def wall_times(net, calib, x, sj_T=32, our_T=8):
    """Seconds per image: SJ multi-step at sj_T, our fast path (eager, compiled), our time-stepped engine."""
    from spikingjelly.activation_based import ann2snn, functional

    calib_batches = _sj_batches(net, calib[:256], most=256)
    sj = ann2snn.Converter(recipe=ann2snn.RateCodingRecipe(dataloader=calib_batches, mode="99.9%")).convert(
        copy.deepcopy(net).eval())
    functional.set_step_mode(sj, "m")

    def sj_run():
        functional.reset_net(sj)
        sj(x.unsqueeze(0).repeat(sj_T, 1, 1, 1, 1)).mean(0)

    ours = sc.convert(net, calib, timesteps=our_T)
    b = len(x)
    out = {"images": b, "sj_T": sj_T, "our_T": our_T,
           "ann": _common.best_time(lambda: net(x)) / b,
           "sj_multistep": _common.best_time(sj_run) / b,
           "ours_fast": _common.best_time(lambda: ours(x)) / b}
    ours.compile()
    out["ours_fast_compiled"] = _common.best_time(lambda: ours(x)) / b
    ours.compile(False)
    out["ours_simulate"] = _common.best_time(lambda: ours.simulate(x), 1) / b
    return out


@torch.no_grad()
def run_ours(net, calib, test, timesteps=(4, 6, 8)):
    """Our method on the same images: accuracy, end-to-end latency and spikes per image."""
    from spikeconverter.metrics import neuron_spike_counts

    rows = []
    for T in timesteps:
        snn = sc.convert(net, calib, timesteps=T)
        correct, spikes, n = 0, 0.0, 0
        for x, y in batches_of(test, 250):
            counts, logits = neuron_spike_counts(snn, x, return_logits=True)
            correct += int((logits.argmax(1) == y).sum())
            spikes += float(sum(c.sum() for c in counts.values()))
            n += len(y)
        rows.append({"timesteps": T, "latency_steps": snn.latency_steps, "accuracy": 100.0 * correct / n,
                     "spikes": spikes / n})
    return rows


def _first_images(ds, n: int) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


def timing(model: str = "resnet20", checkpoint=None, dataset: str = "cifar10") -> dict:
    """Only the wall-time part of compare() (seconds per image), on the same 64 test images."""
    net, info = load_model(model, dataset, _common.checkpoint_for(model, dataset, override=checkpoint))
    sized = sized_kwargs(dataset, info)
    test = fixed_subset(load_dataset(dataset, "test", **sized), 1000, 0)
    return wall_times(net, calibration_data(dataset, 512, **sized), _first_images(test, 64))


def compare(model: str = "resnet20", checkpoint=None, images: int = 1000, sj_calibration: int = 50000,
            quiet: bool = False, dataset: str = "cifar10", sj_timesteps=SJ_T, our_timesteps=(4, 6, 8),
            recipes=None) -> dict:
    """SpikingJelly's recipes and ours on the same checkpoint and test images. Ours calibrates on 512
    training images; SJ's recipes get sj_calibration of them, at most the whole training set (its
    example's default is 50,000: LTB grows its thresholds batch by batch and stays far too low after
    a few batches). Photos (imagenette) are taken at the side the checkpoint was trained at."""
    net, info = load_model(model, dataset, _common.checkpoint_for(model, dataset, override=checkpoint))
    sized = sized_kwargs(dataset, info)
    calib = calibration_data(dataset, 512, **sized)
    n_train = len(load_dataset(dataset, "train", **sized))
    sj_calibration = min(sj_calibration, n_train)
    sj_calib = calib if sj_calibration == 512 else calibration_data(dataset, sj_calibration, **sized)
    test = fixed_subset(load_dataset(dataset, "test", **sized), images, 0)
    return {"model": model, "dataset": dataset, **sized, "checkpoint": info["checkpoint"], "images": len(test),
            "machine": _common.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "calibration_images": len(calib), "sj_calibration_images": len(sj_calib),
            "spikingjelly": run_spikingjelly(net, sj_calib, test, timesteps=tuple(sj_timesteps), quiet=quiet,
                                             recipes=recipes),
            "spikeconverter": run_ours(net, calib, test, timesteps=tuple(our_timesteps)),
            "wall_seconds_per_image": wall_times(net, calib, _first_images(test, 64))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--dataset", default="cifar10", choices=["cifar10", "imagenette"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--sj-calibration", type=int, default=50000,
                    help="training images for SJ's recipes (its example: 50,000; ours always uses 512)")
    ap.add_argument("--sj-timesteps", type=int, nargs="+", default=list(SJ_T),
                    help="SJ's T values (one run of the largest, read at each)")
    ap.add_argument("--our-timesteps", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--recipes", nargs="+", default=None, help="SJ recipes by name (default: all four)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    why = spikingjelly_available()
    if why:
        print(f"SpikingJelly is not installed or does not import ({why}).\n"
              "Install the optional extra with `make compare` (pip install --no-deps spikingjelly==2.0.0 "
              "plus its runtime needs), then run this script again.")
        raise SystemExit(1)
    print(f"machine: {_common.machine()}")
    result = compare(args.model, args.checkpoint, args.images, args.sj_calibration, dataset=args.dataset,
                     sj_timesteps=args.sj_timesteps, our_timesteps=args.our_timesteps, recipes=args.recipes)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
