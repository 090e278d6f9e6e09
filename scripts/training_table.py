"""The training table of docs/training.md, from the shipped checkpoints' metadata.

    python scripts/training_table.py          # rewrite the table in docs/training.md
    python scripts/training_table.py --print  # only print it
"""

import json
import sys
from pathlib import Path

from spikeconverter.models import CHECKPOINT_TARGETS
from spikeconverter.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CK = ROOT / "src" / "spikeconverter" / "checkpoints"


def command(c: dict, m: dict) -> str:
    """The train command that made a checkpoint, from its config: the options that differ from
    TrainConfig's defaults are spelled out, so the line reproduces the run."""
    default = TrainConfig()
    cmd = f"spikeconverter train --model {c['model']} --dataset {c['dataset']}"
    if c.get("image_size"):
        cmd += f" --image-size {c['image_size']}"
    cmd += f" --epochs {c['epochs']} --lr {c['lr']} --weight-decay {c['weight_decay']}"
    for key, flag in (("batch_size", "--batch-size"), ("schedule", "--schedule"), ("label_smoothing", "--label-smoothing")):
        if key in c and c[key] != getattr(default, key):
            cmd += f" {flag} {c[key]}"
    if c.get("bf16") is False:
        cmd += " --no-bf16"
    return cmd + f" --seed {c['seed']}" + (" --half" if m.get("storage") == "float16" else "")


def table() -> str:
    lines = ["| checkpoint | epochs | test accuracy (CIFAR-10 JPEG test / Imagenette val) | target | median s/epoch | storage | "
             "command (scripts/train_zoo.sh) |", "|---|---|---|---|---|---|---|"]
    for meta_file in sorted(CK.glob("*.json")):
        m = json.loads(meta_file.read_text())
        c = m["config"]
        cmd = command(c, m)
        acc = f"{m['test_acc']:.2f} %"
        if "test_acc_float32" in m:
            acc += f" (float32 before export: {m['test_acc_float32']:.2f} %)"
        goal = CHECKPOINT_TARGETS.get((m["arch"], m["dataset"]))
        short = m["test_acc"] - goal if goal is not None else 0.0
        target = "-" if goal is None else f"{goal} % (" + ("met" if short >= 0 else f"{short:+.2f} pp") + ")"
        secs = m.get("seconds_per_epoch_median", "?")
        lines.append(f"| {meta_file.stem} | {m['epochs']} | {acc} | {target} | {secs} | {m.get('storage')} | `{cmd}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    t = table()
    if "--print" in sys.argv:
        print(t)
    else:
        doc = ROOT / "docs" / "training.md"
        sys.path.insert(0, str(ROOT / "benchmarks"))  # the one section writer of the generated documents
        from _common import replace_section

        replace_section(doc, "training", t)
        print(f"wrote the table in {doc}")
