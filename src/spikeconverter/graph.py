"""From a user's nn.Module to a graph the spiking engines can run.

Steps (each a function, in this order, all before any numerical work):

1. ``trace`` (tracing.py): torch.fx tracing specialised to the calibration input's shape (shape
   asserts and branches decided once); control flow on values fails here, naming the line.
2. ``functionalize``: in-place ops keep eager semantics: a later read of a tensor an op wrote into
   reads the written value; where a *view* of that memory is read later, the model is refused.
3. ``validate``: every node must be an op the table in ops.py knows and accepts; anything else
   raises ``UnsupportedOperationError`` naming the node, its op and the reason.
4. ``normalize``: every ReLU form becomes one ``SpikeActivation`` module (unique layer names, also
   for a module called several times), identities disappear, a max-pool on pre-activations that
   feed a ReLU moves after the ReLU (ReLU is monotone: the two commute, bit for bit).
5. ``fold_batchnorm``: conv/linear followed by BatchNorm become one conv/linear with bias.
6. ``analyze``: find the *sources* (the input, each spiking activation, max-pools of sources) and,
   for each *sink* (each spiking activation and the output), the linear *region* that computes the
   sink's input current from its sources. Spiking depth and pipeline delays follow from it.

Why regions: between two spiking layers the ANN may do any linear thing -- convs, residual sums and
differences, concats, slices, pads, permutes, interpolation, average pooling, scaling, BN anywhere,
MobileNet-v2's linear bottleneck feeding a sum. In the SNN all of that is one synaptic current: a
linear function of the source spike trains. A region is that function, and both engines use it.

Why max-pools are sources: a max over the trains of one layer is again a train (greedy MSB-first
codes compare like their values), so a max-pool -- after any rearrangement of trains -- is computed
on the trains themselves, step by step, and feeds later regions like a layer does.
"""

# The front end lives in rooms of its own: the layer module (activation.py), tracing (tracing.py),
# constant folding (constants.py), the passes (passes.py) and the analysed plan with its region
# interpreter (plan.py). This module names them in one place for code that reads the pipeline as
# a whole.
from .activation import SpikeActivation
from .errors import UnsupportedOperationError
from .passes import (
    fold_batchnorm,
    functionalize,
    insert_input_coder,
    mark_shapes,
    normalize,
    prepare,
    validate,
)
from .plan import (
    GraphPlan,
    Region,
    analyze,
    ancestors,
    check_pools,
    is_activation,
    node_shapes,
    node_values,
    pools_mixing_channels,
    run_region,
)
from .tracing import trace

__all__ = ["GraphPlan", "Region", "SpikeActivation", "UnsupportedOperationError", "analyze", "ancestors",
           "check_pools", "fold_batchnorm", "functionalize", "insert_input_coder", "is_activation", "mark_shapes",
           "node_shapes", "node_values", "normalize", "pools_mixing_channels", "prepare", "run_region", "trace",
           "validate"]
