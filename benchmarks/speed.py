"""Images per second of the ANN, our fast path (eager and compiled) and our time-stepped engine at
T = 4, 8, 16, as ratios to the ANN's time measured in the same run. Target: fast path <= 1.3x ANN.

    python benchmarks/speed.py [--models resnet20 vgg16 mobilenet_v2] [--batch 250] [--threads N]
"""

from __future__ import annotations

import argparse
import json

import torch

import spikeconverter as sc
from spikeconverter.evaluate import load_model

import _common


@torch.no_grad()
def measure(model_name: str, batch: int = 250, sim_batch: int = 16, timesteps=(4, 8, 16), reps: int = 5, sim_reps: int = 2,
            dataset: str = "cifar10", checkpoint: str | None = None) -> dict:
    ckpt = _common.checkpoint_for(model_name, dataset, override=checkpoint)
    info = {}
    if ckpt:
        net, info = load_model(model_name, dataset, ckpt)
        weights = "shipped checkpoint"
    else:  # speed does not depend on the weights' values: random weights, said so in the output
        torch.manual_seed(0)
        net = sc.models.create(model_name, dataset=dataset).eval()
        weights = "random weights (no shipped checkpoint)"
    ds = sc.data.DATASETS[dataset]
    side = info.get("image_size") or ds.image_size  # photos: the side the checkpoint was trained at
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, ds.channels, side, side, generator=g)
    xs = x[:sim_batch]
    t_ann = _common.best_time(lambda: net(x), reps)
    t_ann_small = _common.best_time(lambda: net(xs), reps)
    rows = []
    for T in timesteps:
        snn = sc.convert(net, x[:128], timesteps=T)
        t_fast = _common.best_time(lambda: snn(x), reps)
        snn.compile()
        t_comp = _common.best_time(lambda: snn(x), reps)
        snn.compile(False)
        t_sim = _common.best_time(lambda: snn.simulate(xs, clocked=True), 2)
        t_layers = _common.best_time(lambda: snn.simulate(xs, clocked=False), 2)
        rows.append({"T": T, "fast_ratio": t_fast / t_ann, "compiled_ratio": t_comp / t_ann,
                     "simulate_ratio": t_sim / t_ann_small, "simulate_layers_ratio": t_layers / t_ann_small,
                     "img_per_s_fast": batch / t_fast, "img_per_s_compiled": batch / t_comp,
                     "img_per_s_simulate": sim_batch / t_sim})
    return {"model": model_name, "dataset": dataset, "image_size": side, "weights": weights, "batch": batch,
            "sim_batch": sim_batch, "reps": reps, "sim_reps": sim_reps,
            "img_per_s_ann": batch / t_ann, "rows": rows}


def _label(r: dict) -> str:
    ds = r.get("dataset", "cifar10")
    return r["model"] if ds == "cifar10" else f"{r['model']} ({ds}, {r['image_size']} px)"


def format_speed(results: list[dict], machine: str) -> str:
    # older results did not record these; they were measured with measure()'s defaults then
    batch = {r.get("batch", 250) for r in results}
    reps = {r.get("reps", 5) for r in results}
    sim = {r.get("sim_batch", 16) for r in results}
    sim_reps = {r.get("sim_reps", 1) for r in results}

    def one(values):
        return "/".join(str(v) for v in sorted(values))

    lines = [f"Machine: {machine}. Ratios are times relative to the ANN on the same batch ({one(batch)} random "
             f"inputs of the network's input size), measured in one run (best of {one(reps)}; the time-stepped "
             f"engine: best of {one(sim_reps)} on a {one(sim)}-image batch vs the ANN on the same {one(sim)} images). The "
             "time-stepped engine in its two orders (engine.py): every layer on one clock (the CPU default), and "
             "layer after layer with each layer's input frames through its synapses in one batched call.",
             "",
             "| model | T | ANN img/s | fast path (eager) | fast path (compiled) | time-stepped, one clock "
             "| time-stepped, layer after layer |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            lines.append(f"| {_label(r)} | {row['T']} | {r['img_per_s_ann']:,.0f} | "
                         f"{row['fast_ratio']:.2f}x ({row['img_per_s_fast']:,.0f} img/s) | "
                         f"{row['compiled_ratio']:.2f}x ({row['img_per_s_compiled']:,.0f} img/s) | "
                         f"{row['simulate_ratio']:.1f}x ({row['img_per_s_simulate']:,.1f} img/s) | "
                         + (f"{row['simulate_layers_ratio']:.1f}x |" if "simulate_layers_ratio" in row else "- |"))
    lines.append("")
    lines.append("Weights: " + "; ".join(f"{r['model']}: {r['weights']}" for r in results) + ".")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet20", "vgg16", "mobilenet_v2"])
    ap.add_argument("--dataset", default="cifar10", help="input shape and checkpoint (imagenette: its trained side)")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(m, args.batch, dataset=args.dataset) for m in args.models]
    print(format_speed(results, _common.machine()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": _common.machine(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
