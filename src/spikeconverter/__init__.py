"""spikeconverter: convert trained PyTorch CNNs into spiking networks that compute the same function.

    import spikeconverter as sc
    snn = sc.convert(model, calibration, timesteps=8, beta=2.0)
    logits = snn(x)              # exact fast path (the quantizer twin)
    res = snn.simulate(x)        # time-stepped two-phase simulation
    snn.save("net.snn"); snn = sc.load("net.snn")   # a file without pickle, bit for bit
"""

__version__ = "0.1.0"

from . import data, evaluate, graph, metrics, models, neuron, plot  # noqa: E402
from .convert import convert  # noqa: E402
from .engine import SimulationResult  # noqa: E402
from .errors import UnsupportedOperationError  # noqa: E402
from .finetune import finetune  # noqa: E402
from .network import LayerInfo, SpikingNetwork  # noqa: E402
from .serialize import SnnFileError, load  # noqa: E402

__all__ = ["LayerInfo", "SimulationResult", "SpikingNetwork", "SnnFileError", "UnsupportedOperationError", "convert",
           "data", "evaluate", "finetune", "graph", "load", "metrics", "models", "neuron", "plot"]
