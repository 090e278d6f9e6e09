"""The README as a user meets it: its commands parse, its quickstart runs as written."""

from pathlib import Path

import pytest

from spikeconverter.cli import build_parser
from spikeconverter.models import shipped_checkpoint

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_commands_parse():
    # every `spikeconverter ...` line the README shows is accepted by the parser as written
    parser = build_parser()
    lines = [ln.strip().split("#", 1)[0].strip() for ln in README.splitlines()
             if ln.strip().startswith(("spikeconverter ", "torchrun "))]
    assert len(lines) >= 10
    for line in lines:
        argv = line.split()
        argv = argv[argv.index("spikeconverter") + 1:] if "spikeconverter" in argv else argv
        argv = [a for a in argv if not a.startswith("[") and not a.endswith("]") and "|" not in a]
        if argv and argv[-1] == "...":
            continue
        parser.parse_args(argv)


@pytest.mark.skipif(shipped_checkpoint("resnet20", "cifar10") is None, reason="needs CIFAR-10 data")
def test_readme_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    from spikeconverter.data import load_dataset

    try:
        load_dataset("cifar10", "test")
    except Exception as e:  # pragma: no cover - the suite runs with ../shared beside it
        pytest.skip(f"CIFAR-10 not found: {e}")
    block = README.split("## Quickstart", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README quickstart", "exec"), {})
    out = capsys.readouterr().out
    ann, snn = (float(out.split(k)[1].split("%")[0]) for k in ("ANN ", "SNN "))
    assert ann > 30 and abs(ann - snn) <= 2, out  # trained for real; the SNN keeps its accuracy at T = 8
    assert (tmp_path / "mine_T8.snn").exists()
