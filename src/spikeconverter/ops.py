"""The one table of op kinds: what every op a user's graph may hold is to the spiking network.

Every part that needs to know about an op reads it here -- validation (what is refused and why),
normalisation (activations, in-place forms, identities), the regions' linear parts (how a bias or
constant is dropped), fixed-point mode (what divides by what), the cost model (weighted ops and
their connectivity) and the docs' list of supported ops (``supported_ops_markdown``).

Roles:

- ``activation``: ReLU and its clipped forms; becomes a spiking layer (iLIF neurons).
- ``linear``: a linear or affine map; any chain of them between spiking layers is one synaptic
  current. ``weighted`` ones carry synapses (MACs, SOPs, weight rounding).
- ``rearrange``: moves or copies each neuron's value unchanged (concat, slicing, zero padding,
  permutes, nearest upsampling): it can act on spike trains directly, so a max-pool after it is exact.
- ``maxpool``: max over windows; exact on trains of one layer (greedy MSB-first codes compare
  like their values). On signed pre-activations followed by ReLU it is moved after the ReLU.
- ``identity``: removed (dropout and identity in eval mode, contiguous, clone, detach).
- ``shape``: computes sizes, not signals.
- ``refused``: no exact spiking form; the reason says what would make the model convertible.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

ACTIVATION, LINEAR, REARRANGE, MAXPOOL, IDENTITY, SHAPE, REFUSED = (
    "activation", "linear", "rearrange", "maxpool", "identity", "shape", "refused")


@dataclass(frozen=True)
class OpKind:
    name: str
    role: str
    modules: tuple = ()
    functions: tuple = ()
    methods: tuple = ()
    doc: str = ""  # how users write it (the docs' list)
    weighted: bool = False  # carries synapses
    averaging: bool = False  # divides sums by window sizes (fixed point needs powers of two)
    # (call, args, kwargs) -> the value without constant terms (biases, added numbers, BN shifts)
    linear_part: Callable | None = None
    # (call, args, kwargs) -> the op with every nonzero coefficient 1 (connectivity for SOPs)
    structural: Callable | None = None
    # (gm, node) -> why this use is refused, or None
    check: Callable | None = None
    # (gm, node) -> False where a conditional rearrangement is not one (constant pad != 0, bilinear)
    rearranges: Callable | None = None
    # (call, args, kwargs) -> why the op is not exact on fixed-point's dyadic grid, or None
    fixed_point: Callable | None = None
    # activations: (gm, node) -> the spiking layer (SpikeActivation) that replaces the node
    layer: Callable | None = None
    # weighted: (mod, in_shape, out_shape) -> multiply-accumulates per sample
    macs: Callable | None = None
    # weighted: (mod, x) -> the op with every weight 1 and no bias (its transpose counts synapses)
    unit: Callable | None = None
    # weighted: mod -> its weights with the output channel first (fixed point bounds a potential by rows)
    rows: Callable | None = None
    folds_batchnorm: bool = False  # a BatchNorm right after it folds into its weights and bias
    views: tuple = ()  # forms (modules, functions, method names) whose result is a view of their input
    reason: str = ""  # refused: why, and what to do instead


# ---------------------------------------------------------------------------------------------
# helpers the table's entries use
# ---------------------------------------------------------------------------------------------


def _arg(node_or_args, kwargs, i, name, default=None):
    args = node_or_args
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def is_number(a) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _conv_no_bias(mod, args, kwargs):
    return mod._conv_forward(args[0], mod.weight, None)


def _conv_transpose_no_bias(mod, args, kwargs):
    x = args[0]
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[x.ndim - 2]
    return fn(x, mod.weight, None, mod.stride, mod.padding, mod.output_padding, mod.groups, mod.dilation)


def _linear_no_bias(mod, args, kwargs):
    return F.linear(args[0], mod.weight)


def _numel(shape) -> int:
    return math.prod(int(d) for d in shape[1:])


def _conv_macs(mod, in_shape, out_shape):
    return _numel(out_shape) * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)


def _conv_transpose_macs(mod, in_shape, out_shape):
    return _numel(in_shape) * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)


def _linear_macs(mod, in_shape, out_shape):
    return _numel(out_shape) * mod.in_features


def _elementwise_macs(mod, in_shape, out_shape):
    return _numel(out_shape)  # batch norm on its own: one multiply per element


def _conv_unit(mod, x):
    return mod._conv_forward(x, torch.ones_like(mod.weight, dtype=x.dtype), None)


def _conv_transpose_unit(mod, x):
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[x.ndim - 2]
    return fn(x, torch.ones_like(mod.weight, dtype=x.dtype), None, mod.stride, mod.padding, mod.output_padding,
              mod.groups, mod.dilation)


def _linear_unit(mod, x):
    return F.linear(x, torch.ones_like(mod.weight, dtype=x.dtype))


def _elementwise_unit(mod, x):
    return x  # batch norm: one synapse per neuron


def _weight_rows(mod):
    return mod.weight


def _transposed_rows(mod):
    return mod.weight.transpose(0, 1)  # stored [in, out / groups, ...]: per output channel, all its weights


def _bn_scale(mod):
    scale = torch.rsqrt(mod.running_var + mod.eps)
    return scale * mod.weight if mod.affine else scale


def _bn_no_shift(mod, args, kwargs):
    x = args[0]
    return x * _bn_scale(mod).reshape([-1] + [1] * (x.ndim - 2))


def _bn_check(gm, node):
    bn = gm.get_submodule(node.target)
    if bn.running_mean is None:
        return ("BatchNorm with track_running_stats=False normalises with each batch's own statistics, so the output "
                "of one image depends on the others; train with running statistics (the default) to convert")
    return None


def _sum_linear(sign: float):
    """Linear part of a + sign*alpha*b: a number on either side is a constant term and drops out."""

    def part(call, args, kwargs):
        a, b = args[0], args[1]
        if torch.is_tensor(a) and torch.is_tensor(b):
            return call(*args, **kwargs)
        if torch.is_tensor(a):
            return a
        k = sign * kwargs.get("alpha", 1)
        return b * k if k != 1 else b

    return part


_add_linear, _sub_linear = _sum_linear(1.0), _sum_linear(-1.0)


def _pad_value(gm, node):
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return "constant", float(getattr(mod, "value", 0.0))
    args, kwargs = node.args, node.kwargs
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    return mode, 0.0 if value is None else value


def _pad_rearranges(gm, node):
    mode, value = _pad_value(gm, node)
    return mode != "constant" or (is_number(value) and float(value) == 0.0)


def _pad_linear(call, args, kwargs):
    if isinstance(call, nn.Module):
        if isinstance(call, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            return F.pad(args[0], call.padding, "constant", 0.0)
        return call(*args)
    mode = _arg(args, kwargs, 2, "mode", "constant")
    if mode == "constant":
        return F.pad(args[0], _arg(args, kwargs, 1, "pad"), "constant", 0.0)
    return call(*args, **kwargs)


def _interp_mode(gm, node):
    if node.op == "call_module":
        return gm.get_submodule(node.target).mode
    return _arg(node.args, node.kwargs, 3, "mode", "nearest")


def _interp_rearranges(gm, node):
    return _interp_mode(gm, node) in ("nearest", "nearest-exact")


def _interp_check(gm, node):
    if node.op == "call_module":
        return None
    if _arg(node.args, node.kwargs, 7, "antialias", False):
        return "antialiased interpolation is not supported (use antialias=False)"
    return None


def _separable_structural(call, args, kwargs):
    """Connectivity of a separable interpolation (linear, bilinear, bicubic, trilinear): along each
    axis the op's coefficients are read off by interpolating an identity; nonzero ones become 1."""
    x = args[0]
    nd = x.ndim - 2
    y = call(*args, **kwargs)
    mats = []
    for ax in range(nd):
        n = x.shape[2 + ax]
        shape = [n, 1] + [1] * nd
        shape[2 + ax] = n
        eye = torch.eye(n, dtype=x.dtype, device=x.device).reshape(shape)
        out = call(eye, *args[1:], **kwargs)
        idx = [slice(None), 0] + [0] * nd
        idx[2 + ax] = slice(None)
        m = out[tuple(idx)]  # [n_in, n_out] coefficients along this axis
        if m.shape[1] != y.shape[2 + ax]:
            raise ValueError("interpolation is not separable along its axes")
        mats.append((m != 0).to(x.dtype))
    letters = "defg"[:nd]
    spec = "bc" + letters + "," + ",".join(f"{c}{c.upper()}" for c in letters) + "->bc" + letters.upper()
    return torch.einsum(spec, x, *mats)


def _interp_fixed_point(call, args, kwargs):
    mode = call.mode if isinstance(call, nn.Module) else _arg(args, kwargs, 3, "mode", "nearest")
    if mode in ("nearest", "nearest-exact"):
        return None
    return f"{mode} interpolation's coefficients are not dyadic in general"


def _interp_structural(call, args, kwargs):
    mode = call.mode if isinstance(call, nn.Module) else _arg(args, kwargs, 3, "mode", "nearest")
    if mode in ("nearest", "nearest-exact"):
        return call(*args, **kwargs)
    if mode == "area":  # area = adaptive average pooling
        return _adaptive_sum(lambda t: call(t, *args[1:], **kwargs), args[0])
    return _separable_structural(call, args, kwargs)


def _avg_sum(call, args, kwargs):
    """Window sums instead of averages (every connection counts one), exact at borders and in
    ceil mode: divisor_override=1 where the op has it, else a 2-d pool on a unit axis."""
    x = args[0]
    if isinstance(call, nn.Module):
        k, s, p = call.kernel_size, call.stride, call.padding
        ceil = call.ceil_mode
        nd = 1 if isinstance(call, nn.AvgPool1d) else (2 if isinstance(call, nn.AvgPool2d) else 3)
    else:
        nd = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}[call]
        k = _arg(args, kwargs, 1, "kernel_size")
        s = _arg(args, kwargs, 2, "stride", None)
        p = _arg(args, kwargs, 3, "padding", 0)
        ceil = _arg(args, kwargs, 4, "ceil_mode", False)

    def tup(v):
        if v is None or (isinstance(v, (tuple, list)) and len(v) == 0):
            return None
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd

    k, p = tup(k), tup(p)
    s = tup(s) or k
    if nd == 1:
        y = F.avg_pool2d(x.unsqueeze(-1), (k[0], 1), (s[0], 1), (p[0], 0), ceil, True, 1)
        return y.squeeze(-1)
    fn = F.avg_pool2d if nd == 2 else F.avg_pool3d
    return fn(x, k, s, p, ceil, True, 1)


def _adaptive_sum(pool, x):
    """Sums over adaptive windows: the average times each window's element count."""
    y = pool(x)
    counts = _adaptive_counts(x.shape[2:], y.shape[2:], x.dtype).to(x.device)
    return y * counts


def _adaptive_counts(in_sizes, out_sizes, dtype):
    """Elements in each adaptive window: start = floor(i*In/Out), end = ceil((i+1)*In/Out)."""
    c = torch.ones((), dtype=dtype)
    for ax, (n_in, n_out) in enumerate(zip(in_sizes, out_sizes)):
        i = torch.arange(n_out)
        start = torch.div(i * n_in, n_out, rounding_mode="floor")
        end = -torch.div(-(i + 1) * n_in, n_out, rounding_mode="floor")
        shape = [1] * len(out_sizes)
        shape[ax] = n_out
        c = c * (end - start).to(dtype).reshape(shape)
    return c


def _adaptive_structural(call, args, kwargs):
    return _adaptive_sum(lambda t: call(t, *args[1:], **kwargs), args[0])


def _reduce_structural(call, args, kwargs):
    """mean -> sum over the same dims (sum stays sum)."""
    x = args[0]
    y = call(*args, **kwargs)
    if call in (torch.sum,) or getattr(call, "__name__", "") == "sum":
        return y
    return y * (x.numel() / y.numel())


def _scale_factor(call, args, kwargs):
    """(factor the signal is multiplied by) of mul/div by a number."""
    a, b = args[0], args[1]
    num = b if torch.is_tensor(a) else a
    if call in (operator.truediv, torch.div, torch.true_divide) or getattr(call, "__name__", "") in ("div", "true_divide"):
        return 1.0 / float(num)
    return float(num)


def _scale_fixed_point(call, args, kwargs):
    f = abs(_scale_factor(call, args, kwargs))
    e = -math.log2(f) if f > 0 else float("inf")
    if f <= 1 and float(e).is_integer() and e <= 12:
        return None
    return f"a scale by {_scale_factor(call, args, kwargs):g} is not a division by a power of two (up to 4096)"


def _scale_structural(call, args, kwargs):
    a, b = args[0], args[1]
    return a if torch.is_tensor(a) else b


def _one_signal(gm, node, what):
    tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and not a.meta.get("shape_value", False)]
    if len(tensors) == 2:
        return (f"{what} of two signals (attention, squeeze-excitation or sigmoid gating) has no synaptic form: a "
                "spiking neuron only adds weighted spikes; remove the gating to convert")
    if what == "a division" and isinstance(node.args[1], fx.Node) and not node.args[1].meta.get("shape_value", False):
        return "division by a signal has no synaptic form"
    return None


def _mul_check(gm, node):
    return _one_signal(gm, node, "a product")


def _div_check(gm, node):
    return _one_signal(gm, node, "a division")


def _maxpool_check(gm, node):
    if node.op == "call_module":
        if getattr(gm.get_submodule(node.target), "return_indices", False):
            return "max-pooling with return_indices (unpooling) is not supported"
        return None
    if node.kwargs.get("return_indices"):
        return "max-pooling with return_indices (unpooling) is not supported"
    return None


def _getitem_check(gm, node):
    idx = node.args[1]
    bad = []
    fx.node.map_arg(idx, lambda n: bad.append(n) if not n.meta.get("shape_value", False) else None)
    if bad:
        return "indexing with a tensor of indices is not supported (use slices, or torch.cat of the parts)"
    return None


# ---------------------------------------------------------------------------------------------
# activations: ReLU and its clipped forms -> (is it one, cap or None, why not)
# ---------------------------------------------------------------------------------------------


def _relu_layer(gm, node):
    from .activation import SpikeActivation  # the layer module needs the neuron; ops stays importable alone

    return SpikeActivation(None)


def _clip_bounds(gm, node) -> tuple:
    """(lower, upper) of a clipped form (upper None: unbounded)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return float(mod.min_val), float(mod.max_val)
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and node.target in (F.hardtanh, F.hardtanh_):
        return (_arg(node.args, node.kwargs, 1, "min_val", -1.0), _arg(node.args, node.kwargs, 2, "max_val", 1.0))
    if node.target in (torch.clamp_min, "clamp_min", "clamp_min_"):
        return _arg(node.args, node.kwargs, 1, "min", None), None
    return _arg(node.args, node.kwargs, 1, "min", None), _arg(node.args, node.kwargs, 2, "max", None)  # clamp, clip


def _clip_check(gm, node):
    lo, hi = _clip_bounds(gm, node)
    ok_lo = is_number(lo) and float(lo) == 0.0
    ok_hi = hi is None or (is_number(hi) and float(hi) > 0)
    if not (ok_lo and ok_hi):
        return (f"a clip to [{lo}, {hi}] is not a ReLU (lower bound 0) or a clipped ReLU (upper bound > 0); "
                "only those have an exact spiking form")
    return None


def _clip_layer(gm, node):
    from .activation import SpikeActivation

    hi = _clip_bounds(gm, node)[1]
    return SpikeActivation(None if hi is None else float(hi))


def leaky_slope(gm, node):
    """The negative slope of a leaky activation: a float (LeakyReLU), a per-channel tensor (PReLU)."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.LeakyReLU):
            return float(mod.negative_slope)
        w = mod.weight.detach()  # nn.PReLU
        return float(w) if w.numel() == 1 else w.clone()
    if node.target in (F.leaky_relu, F.leaky_relu_):
        return float(_arg(node.args, node.kwargs, 1, "negative_slope", 0.01))
    w = _arg(node.args, node.kwargs, 1, "weight")  # F.prelu
    if isinstance(w, fx.Node) and w.op == "get_attr":
        t = functools.reduce(getattr, w.target.split("."), gm).detach()
        return float(t) if t.numel() == 1 else t.clone()
    return None


def _leaky_layer(gm, node):
    from .activation import SpikeActivation

    return SpikeActivation(None, negative_slope=leaky_slope(gm, node))


def _leaky_check(gm, node):
    if node.op == "call_function" and node.target is F.prelu:
        w = _arg(node.args, node.kwargs, 1, "weight")
        if not (isinstance(w, fx.Node) and w.op == "get_attr"):
            return "F.prelu with a weight computed in forward() is not supported (use nn.PReLU)"
    slope = leaky_slope(gm, node)
    values = slope.flatten().tolist() if torch.is_tensor(slope) else [slope]
    if any(not (0.0 <= float(v) < 1.0) for v in values):
        return (f"a negative slope outside [0, 1) ({min(values):g}..{max(values):g}) is not a leaky ReLU; the "
                "two-population spiking form needs 0 <= slope < 1")
    return None


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

_CURVED = ("a curved activation has no exact spiking form: replace it with ReLU (or a clipped ReLU such as ReLU6) "
           "and fine-tune, then convert")

TABLE: list[OpKind] = [
    OpKind("ReLU", ACTIVATION, (nn.ReLU,), (F.relu, torch.relu, F.relu_, torch.relu_), ("relu", "relu_"),
           "`nn.ReLU`, `F.relu`, `torch.relu`, `x.relu()`, in-place forms", layer=_relu_layer),
    OpKind("clipped ReLU", ACTIVATION, (nn.ReLU6, nn.Hardtanh), (F.relu6, F.hardtanh, F.hardtanh_, torch.clamp,
           torch.clip, torch.clamp_min), ("clamp", "clip", "clamp_", "clip_", "clamp_min", "clamp_min_"),
           "`nn.ReLU6`, `F.relu6`, `Hardtanh(0, c)`, `torch.clamp(x, 0, c)`, `x.clamp(min=0)`, `clamp_min(0)`",
           check=_clip_check, layer=_clip_layer),
    OpKind("convolution", LINEAR, (nn.Conv1d, nn.Conv2d, nn.Conv3d), (), (), "`nn.Conv1d/2d/3d` (any groups, "
           "stride, padding, dilation)", weighted=True, linear_part=_conv_no_bias, macs=_conv_macs, unit=_conv_unit,
           rows=_weight_rows, folds_batchnorm=True),
    OpKind("transposed convolution", LINEAR, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), (), (),
           "`nn.ConvTranspose1d/2d/3d`", weighted=True, linear_part=_conv_transpose_no_bias,
           macs=_conv_transpose_macs, unit=_conv_transpose_unit, rows=_transposed_rows),
    OpKind("fully connected", LINEAR, (nn.Linear,), (), (), "`nn.Linear`", weighted=True,
           linear_part=_linear_no_bias, macs=_linear_macs, unit=_linear_unit, rows=_weight_rows, folds_batchnorm=True),
    OpKind("batch norm", LINEAR, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), (), (),
           "`nn.BatchNorm1d/2d/3d` with running statistics: folded into the conv/linear before it, "
           "anywhere else a per-channel affine map", weighted=True, linear_part=_bn_no_shift, check=_bn_check,
           macs=_elementwise_macs, unit=_elementwise_unit),
    OpKind("average pooling", LINEAR, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), (F.avg_pool1d, F.avg_pool2d,
           F.avg_pool3d), (), "`nn.AvgPool1d/2d/3d`, `F.avg_pool*` (sizes may be read from tensors)",
           averaging=True, structural=_avg_sum),
    OpKind("adaptive average pooling", LINEAR, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
           (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d), (),
           "`nn.AdaptiveAvgPool*`, `F.adaptive_avg_pool*`", averaging=True, structural=_adaptive_structural),
    OpKind("mean / sum", LINEAR, (), (torch.mean, torch.sum), ("mean", "sum"), "`x.mean(dims)`, `torch.mean`, "
           "`x.sum(dims)`", averaging=True, structural=_reduce_structural),
    OpKind("addition", LINEAR, (), (operator.add, operator.iadd, torch.add), ("add", "add_"),
           "`+`, `+=`, `torch.add`, `x.add(y)` (of signals, or a signal and a number)", linear_part=_add_linear),
    OpKind("subtraction", LINEAR, (), (operator.sub, operator.isub, torch.sub), ("sub", "sub_"),
           "`-`, `-=`, `torch.sub`", linear_part=_sub_linear),
    OpKind("negation", LINEAR, (), (operator.neg, torch.neg), ("neg",), "`-x`, `torch.neg`"),
    OpKind("scaling", LINEAR, (), (operator.mul, operator.imul, torch.mul), ("mul", "mul_"),
           "`x * c`, `c * x`, `torch.mul(x, c)` by a number", check=_mul_check, fixed_point=_scale_fixed_point,
           structural=_scale_structural),
    OpKind("division by a number", LINEAR, (), (operator.truediv, operator.itruediv, torch.div, torch.true_divide),
           ("div", "div_", "true_divide"), "`x / c`, `torch.div(x, c)`", check=_div_check,
           fixed_point=_scale_fixed_point, structural=_scale_structural),
    OpKind("interpolation", LINEAR, (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d),
           (F.interpolate, F.upsample), (), "`F.interpolate`, `nn.Upsample` (nearest: a rearrangement; linear, "
           "bilinear, bicubic, trilinear, area: linear)", rearranges=_interp_rearranges, check=_interp_check,
           structural=_interp_structural, fixed_point=_interp_fixed_point),
    OpKind("padding", REARRANGE, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
           nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
           nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d), (F.pad,), (),
           "`F.pad` (any mode), `nn.ZeroPad*`, `nn.ConstantPad*`, `nn.ReflectionPad*`, `nn.ReplicationPad*`, "
           "`nn.CircularPad*` (a nonzero constant is a bias)", linear_part=_pad_linear, rearranges=_pad_rearranges),
    OpKind("concatenation", REARRANGE, (), (torch.cat, torch.concat, torch.concatenate, torch.stack), (),
           "`torch.cat`, `torch.concat`, `torch.stack`"),
    OpKind("indexing and slicing", REARRANGE, (), (operator.getitem, torch.narrow, torch.select), ("narrow", "select"),
           "`x[:, :c]`, `x[..., ::2, ::2]`, `x.narrow`, `torch.narrow`, `torch.select`, picking a part of "
           "`chunk`/`split`", check=_getitem_check,
           views=(operator.getitem, torch.narrow, torch.select, "narrow", "select")),
    OpKind("splitting", REARRANGE, (), (torch.chunk, torch.split, torch.tensor_split, torch.unbind),
           ("chunk", "split", "tensor_split", "unbind"), "`x.chunk(2, 1)`, `torch.split`, `unbind`",
           views=(torch.chunk, torch.split, torch.tensor_split, torch.unbind, "chunk", "split", "tensor_split",
                  "unbind")),
    OpKind("reshaping", REARRANGE, (nn.Flatten, nn.Unflatten), (torch.flatten, torch.reshape, torch.squeeze,
           torch.unsqueeze, torch.movedim), ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
           "view_as", "reshape_as", "movedim", "contiguous"), "`view`/`reshape`/`flatten` (shapes may be read from "
           "tensors), `squeeze`/`unsqueeze`, `contiguous` (kept: a later `view` needs it), `nn.Flatten`/`nn.Unflatten`",
           views=(nn.Flatten, nn.Unflatten, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.movedim,
                  "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "movedim",
                  "contiguous")),
    OpKind("permuting", REARRANGE, (nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle),
           (torch.transpose, torch.permute, torch.flip, torch.roll, F.pixel_shuffle, F.pixel_unshuffle,
            F.channel_shuffle, torch.t), ("transpose", "permute", "flip", "roll", "t", "expand", "expand_as",
                                          "repeat"),
           "`transpose`, `permute` (ShuffleNet's channel shuffle), `flip`, `roll`, `expand`, `repeat`, "
           "`nn.ChannelShuffle`, pixel (un)shuffle",
           views=(torch.transpose, torch.permute, torch.t, "transpose", "permute", "t", "expand", "expand_as")),
    OpKind("max pooling", MAXPOOL, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
           nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), (F.max_pool1d, F.max_pool2d, F.max_pool3d,
           F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d), (),
           "`nn.MaxPool1d/2d/3d` (ceil mode too), `nn.AdaptiveMaxPool*`, `F.max_pool*`: on the spike trains of one "
           "layer, directly or after rearrangements (concat, slicing, zero padding, permutes, nearest upsampling); "
           "a max-pool on pre-activations followed by ReLU is moved after the ReLU (they commute)",
           check=_maxpool_check),
    OpKind("identity in eval mode", IDENTITY, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
           nn.AlphaDropout), (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d), ("clone", "detach"),
           "`nn.Dropout*`, `F.dropout*`, `nn.Identity`, `clone`, `detach`", views=(nn.Identity, nn.Dropout, "detach")),
    OpKind("shape", SHAPE, (), (getattr,), ("size", "dim"), "`x.size()`, `x.shape`, `x.dim()` and arithmetic on them"),
    OpKind("curved activation", REFUSED, (nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish,
           nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Tanhshrink),
           (torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.mish, F.elu,
            F.selu, F.celu, F.softplus), ("sigmoid", "tanh", "sigmoid_", "tanh_"), reason=_CURVED),
    OpKind("leaky ReLU", ACTIVATION, (nn.LeakyReLU, nn.PReLU), (F.leaky_relu, F.leaky_relu_, F.prelu), (),
           "`nn.LeakyReLU`, `F.leaky_relu`, `nn.PReLU` (one or per-channel slopes in [0, 1)): two spiking "
           "populations, ON for z > 0 and OFF for -slope*z", check=_leaky_check, layer=_leaky_layer),
    OpKind("randomised leaky activation", REFUSED, (nn.RReLU,), (F.rrelu,), (),
           reason="RReLU has no exact spiking form as written (its slope is random in training); replace it with "
           "nn.LeakyReLU((lower + upper) / 2), what it computes in eval mode, then convert"),
    OpKind("softmax", REFUSED, (nn.Softmax, nn.LogSoftmax), (F.softmax, F.log_softmax, torch.softmax,
           torch.log_softmax), ("softmax", "log_softmax"), reason="normalises over the whole output; return the "
           "logits instead (argmax, the prediction, is the same)"),
    OpKind("per-input normalisation", REFUSED, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
           nn.InstanceNorm3d, nn.LocalResponseNorm), (F.layer_norm, F.group_norm, F.instance_norm,
           F.local_response_norm), (), reason="normalises with statistics of each input: not a fixed linear map; use "
           "BatchNorm (folded at conversion) instead"),
    OpKind("product of signals", REFUSED, (), (torch.matmul, torch.bmm, torch.einsum, operator.matmul), ("matmul", "bmm"),
           reason="a product of two signals has no synaptic form: a spiking neuron only adds weighted spikes"),
    OpKind("assignment into a tensor", REFUSED, (), (operator.setitem,), ("copy_", "fill_", "zero_"),
           reason="writes into a tensor in place; build it with torch.cat or F.pad instead"),
]

_BY_MODULE: dict[type, OpKind] = {}
_BY_FUNCTION: dict = {}
_BY_METHOD: dict[str, OpKind] = {}
for _k in TABLE:
    for _m in _k.modules:
        _BY_MODULE[_m] = _k
    for _f in _k.functions:
        _BY_FUNCTION.setdefault(_f, _k)
    for _name in _k.methods:
        _BY_METHOD.setdefault(_name, _k)

# Python operators applied to shape values (sizes read from tensors) are shape arithmetic
SHAPE_ARITH = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
               operator.neg, operator.getitem}


def kind_of(gm: fx.GraphModule, node: fx.Node) -> OpKind | None:
    """The table's entry for ``node`` (None: an op the table does not know)."""
    if node.op == "call_module":
        return _BY_MODULE.get(type(gm.get_submodule(node.target)))
    if node.op == "call_function":
        try:
            return _BY_FUNCTION.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _BY_METHOD.get(node.target)
    return None


def role_of(gm, node) -> str | None:
    k = kind_of(gm, node)
    if k is None:
        return None
    if k.rearranges is not None and k.role == REARRANGE and not k.rearranges(gm, node):
        return LINEAR
    if k.rearranges is not None and k.role == LINEAR and k.rearranges(gm, node):
        return REARRANGE
    return k.role


def is_inplace(gm, node) -> bool:
    """Does ``node`` write into its first argument (eager semantics)?"""
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        t = node.target
        if t in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
            return True
        if node.kwargs.get("inplace"):
            return True
        name = getattr(t, "__name__", "")
        return name.endswith("_") and not name.startswith("_")
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    return False


def is_view(gm, node) -> bool:
    """Does ``node`` return a view of its first argument (writing into either writes into both)?"""
    k = kind_of(gm, node)
    if k is None or not k.views:
        return False
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) in k.views
    return node.target in k.views


def callable_of(gm, node) -> Callable:
    """What ``node`` calls: the module, the function, or a bound-method caller."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)
    if node.op == "call_function":
        return node.target
    name = node.target

    def method(*args, **kwargs):
        return getattr(args[0], name)(*args[1:], **kwargs)

    method.__name__ = name
    return method


def linear_part(gm, node, args, kwargs):
    """The node's value without its constant terms (biases, BN shifts, added numbers)."""
    k = kind_of(gm, node)
    call = callable_of(gm, node)
    if k is not None and k.linear_part is not None:
        return k.linear_part(call, args, kwargs)
    return call(*args, **kwargs)


def structural(gm, node, args, kwargs):
    """The node's unweighted op with every nonzero coefficient 1 (connectivity for SOP counts)."""
    k = kind_of(gm, node)
    call = callable_of(gm, node)
    if k is not None and k.structural is not None:
        return k.structural(call, args, kwargs)
    if k is not None and k.weighted and isinstance(call, nn.modules.batchnorm._BatchNorm):
        return args[0]
    return call(*args, **kwargs)


def _weighted_kind(mod: nn.Module) -> OpKind:
    k = _BY_MODULE.get(type(mod))
    if k is None or not k.weighted:
        raise TypeError(f"{type(mod).__name__} is not a weighted op of the table")
    return k


def ones_weighted(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A weighted op with every weight 1 and no bias: its transpose applied to ones counts synapses."""
    return _weighted_kind(mod).unit(mod, x)


def macs(mod: nn.Module, in_shape, out_shape) -> int:
    """Multiply-accumulates per sample of one weighted op."""
    return _weighted_kind(mod).macs(mod, in_shape, out_shape)


def weight_rows(mod: nn.Module) -> torch.Tensor:
    """A weighted op's weights with the output channel first: a row holds every weight into one of
    its output neurons (all of them, for a transposed convolution: a bound)."""
    return _weighted_kind(mod).rows(mod)


def folds_batchnorm(mod: nn.Module) -> bool:
    k = _BY_MODULE.get(type(mod))
    return k is not None and k.folds_batchnorm


def averaging_divisors(gm, node, args, kwargs) -> torch.Tensor | None:
    """Per output element, the number an averaging node divides its window sum by (None: the node
    does not average). Read off the op itself: structural(ones) / op(ones)."""
    k = kind_of(gm, node)
    if k is None or not k.averaging:
        return None
    ones = torch.ones_like(args[0], dtype=torch.float64)
    a = (ones,) + tuple(args[1:])
    return structural(gm, node, a, kwargs) / callable_of(gm, node)(*a, **kwargs)


def fixed_point_problem(gm, node, args, kwargs) -> str | None:
    """Why ``node`` is not exact on fixed-point's dyadic grid (None: it is)."""
    k = kind_of(gm, node)
    if k is None:
        return None
    if k.averaging:
        d = averaging_divisors(gm, node, args, kwargs)
        vals = torch.unique(d)
        bad = [float(v) for v in vals if not _power_of_two(float(v)) or float(v) > 4096]
        if bad:
            return f"it averages over {bad[0]:g} elements (fixed point needs power-of-two averages, up to 4096)"
        return None
    if k.fixed_point is not None:
        return k.fixed_point(callable_of(gm, node), args, kwargs)
    return None


def _power_of_two(x: float) -> bool:
    return x > 0 and float(x).is_integer() and (int(x) & (int(x) - 1)) == 0


def describe(gm, node) -> str:
    """'node 'name' (call_module Conv2d 'features.0')' -- how errors name a node."""
    if node.op == "call_module":
        what = f"{type(gm.get_submodule(node.target)).__name__} '{node.target}'"
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        mod = getattr(node.target, "__module__", "") or ""
        if mod.startswith("torch.nn.functional"):
            what = f"F.{name}"
        elif mod in ("_operator", "operator"):
            what = f"operator.{name}"
        else:
            what = f"torch.{name}"
    else:
        what = f".{node.target}()"
    return f"node '{node.name}' ({node.op} {what})"


def supported_summary() -> str:
    """For error messages: where the supported ops are listed (one short line, not the list)."""
    return "the supported ops are listed in docs/method.md (generated from spikeconverter.ops.TABLE)"


def supported_ops_markdown() -> str:
    """The docs' table of op kinds, generated from TABLE (docs/method.md)."""
    roles = {ACTIVATION: "spiking layer", LINEAR: "part of a synaptic current", REARRANGE: "rearrangement (acts on "
             "trains)", MAXPOOL: "spiking max-pool", IDENTITY: "removed", SHAPE: "shape arithmetic"}
    lines = ["| op kind | what it is to the SNN | forms |", "|---|---|---|"]
    for k in TABLE:
        if k.role == REFUSED:
            continue
        extra = " (weighted: synapses)" if k.weighted else ""
        lines.append(f"| {k.name} | {roles[k.role]}{extra} | {k.doc} |")
    lines += ["", "Refused, each with the reason the error gives:", ""]
    for k in TABLE:
        if k.role == REFUSED:
            names = [m.__name__ for m in k.modules][:6] + [getattr(f, "__name__", str(f)) for f in k.functions]
            forms = ", ".join(f"`{n}`" for n in dict.fromkeys(names))
            lines.append(f"- **{k.name}** ({forms}): {k.reason}")
    return "\n".join(lines)
