"""Print the training table of docs/training.md from the shipped checkpoints' metadata."""

import json
from pathlib import Path

CK = Path(__file__).resolve().parents[1] / "src" / "spikeconverter" / "checkpoints"

print("| checkpoint | epochs | test accuracy (JPEG CIFAR-10) | median s/epoch | storage | command (scripts/train_zoo.sh) |")
print("|---|---|---|---|---|---|")
for meta_file in sorted(CK.glob("*.json")):
    m = json.loads(meta_file.read_text())
    c = m["config"]
    cmd = (f"spikeconverter train --model {c['model']} --dataset {c['dataset']} --epochs {c['epochs']} --lr {c['lr']} "
           f"--weight-decay {c['weight_decay']} --seed {c['seed']}" + (" --half" if m.get("storage") == "float16" else ""))
    secs = m.get("seconds_per_epoch_median", "?")
    print(f"| {meta_file.stem} | {m['epochs']} | {m['test_acc']:.2f} % | {secs} | {m.get('storage')} | `{cmd}` |")
