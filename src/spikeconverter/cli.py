"""The ``spikeconverter`` command line."""

from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                      label_smoothing=args.label_smoothing, seed=args.seed, bf16=not args.no_bf16,
                      data_root=args.data, threads=args.threads)
    meta = train(cfg, args.out, resume=args.resume, progress=not args.quiet, export=args.export,
                 half_export=args.half, stop_after=args.stop_after, limit=args.limit)
    print(f"{cfg.model}/{cfg.dataset}: epoch {meta['epoch']}/{meta['epochs']}, test accuracy {meta['test_acc']:.2f}%")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikeconverter", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model of the zoo (checkpoint every epoch, --resume)")
    t.add_argument("--model", default="resnet20")
    t.add_argument("--dataset", default="cifar10")
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle")
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-bf16", action="store_true", help="train in float32")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--data", default=None, help="dataset root (default: SPIKECONVERTER_DATA, then usual places)")
    t.add_argument("--out", required=True, help="run checkpoint (.safetensors), rewritten every epoch")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--export", default=None, help="also write the final weights here (shippable form)")
    t.add_argument("--half", action="store_true", help="export in float16")
    t.add_argument("--stop-after", type=int, default=None, help="run at most N epochs now (resume later)")
    t.add_argument("--limit", type=int, default=None, help="train on the first N training images only")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"spikeconverter: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
