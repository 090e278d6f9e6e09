"""Reference executor of an integer deployment bundle (``spikeconverter export``): plain NumPy, no torch.

    python run.py BUNDLE_DIR inputs.npy [--out logits.npy]      (the copy of this file in the bundle)

Every number is a dyadic integer: an int64 array ``a`` and an exponent ``e`` standing for a * 2^-e.
Products add exponents, sums align them (a shift), so all arithmetic is exact; int64 holds 63 bits
(the float64 engine 53) and every sum is checked against it. The network runs as the time-stepped
two-phase SNN: each spiking layer (in graph order) accumulates its input current for as many steps
as its longest input train (V <- beta V + I(t); trains start together, most significant digit
first), then generates its own T spikes (V <- beta V; spike where V >= theta; V -= theta); T may
differ per layer. A leaky layer has a second, OFF population coding -slope * z; its train is
ON - OFF. Because each layer takes all of its inputs before it generates, running the layers
one after another gives the values the pipelined schedule gives (bundle.json's ``schedule`` has each
layer's accumulate and generate steps for hardware that pipelines them). Max-pools act on the trains'
MSB-first words, step by step. Logits and per-layer spike counts equal the fixed-point engine's bit
for bit (tests/test_export.py).
"""

from __future__ import annotations

import json
import math
import operator
import sys
from pathlib import Path

import numpy as np

LIMIT = 2**62  # |values| stay below this: sums of two never overflow int64

# What Bundle._call implements, by module class, function name and method name: export refuses any
# other op before it writes a bundle. Kept here, beside the implementations, so the two cannot drift.
MODULES = ("Conv1d", "Conv2d", "Linear", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
           "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "Flatten", "SpikeActivation")
FUNCTIONS = ("add", "iadd", "sub", "isub", "mul", "floordiv", "truediv", "mod", "getattr", "getitem", "cat",
             "concat", "flatten", "max_pool1d", "max_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d")
METHODS = ("size", "flatten", "reshape", "view", "add", "sub")


class Dy:
    """a * 2^-e, a an int64 array (or a Python int for shape arithmetic is never wrapped)."""

    __slots__ = ("a", "e")

    def __init__(self, a, e: int):
        self.a, self.e = np.asarray(a, dtype=np.int64), int(e)

    def at(self, e: int) -> np.ndarray:
        if e < self.e:
            raise ArithmeticError("a dyadic value would lose bits")
        return _checked(self.a * (1 << (e - self.e)) if e > self.e else self.a, self.a, e - self.e)

    def float(self) -> np.ndarray:
        return self.a.astype(np.float64) * 2.0**-self.e


def _checked(result, a, shift=0):
    if a.size and int(np.abs(a).max()) >= LIMIT >> shift:
        raise OverflowError("a potential leaves int64's range: use fewer time steps")
    return result


def add(x: Dy, y: Dy, sign: int = 1) -> Dy:
    e = max(x.e, y.e)
    return Dy(x.at(e) + sign * y.at(e), e)


def from_float(v: float) -> Dy:
    """A float that is a dyadic rational, exactly."""
    m, ex = math.frexp(v)
    a, e = int(m * 2**53), 53 - ex
    while e > 0 and a % 2 == 0:
        a, e = a // 2, e - 1
    return Dy(a, e)


# ---------------------------------------------------------------------------------------------
# integer ops
# ---------------------------------------------------------------------------------------------


def _tup(v, n):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


def _windows(x, k, s, d, pad_value, p):
    """Sliding windows of x [B, C, *sp] -> [B, C, *out, *k] (stride s, dilation d, padding p)."""
    nd = len(k)
    if any(p):
        x = np.pad(x, [(0, 0), (0, 0)] + [(q, q) for q in p], constant_values=pad_value)
    span = [d[i] * (k[i] - 1) + 1 for i in range(nd)]
    w = np.lib.stride_tricks.sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s[i]) for i in range(nd)) + \
        tuple(slice(None, None, d[i]) for i in range(nd))
    return w[sl]


def conv(x: Dy, w: Dy, b: Dy | None, cfg: dict) -> Dy:
    nd = w.a.ndim - 2
    k = w.a.shape[2:]
    s, d = _tup(cfg["stride"], nd), _tup(cfg["dilation"], nd)
    p = cfg["padding"]
    if isinstance(p, str):
        raise NotImplementedError("string padding")
    p = _tup(p, nd)
    g = cfg["groups"]
    win = _windows(x.a, k, s, d, 0, p)  # [B, Cin, *out, *k]
    B, Cin = win.shape[:2]
    out_sp = win.shape[2:2 + nd]
    Cout = w.a.shape[0]
    ys = []
    for gi in range(g):
        xi = win[:, gi * Cin // g:(gi + 1) * Cin // g]  # [B, cin, *out, *k]
        wi = w.a[gi * Cout // g:(gi + 1) * Cout // g]  # [cout, cin, *k]
        xi = np.moveaxis(xi, 1, 1 + nd).reshape(B, *out_sp, -1)  # [B, *out, cin*k]
        ys.append(np.moveaxis(xi @ wi.reshape(wi.shape[0], -1).T, -1, 1))
    y = Dy(np.concatenate(ys, 1), x.e + w.e)
    _bound(x, w)
    return y if b is None else add(y, Dy(b.a.reshape((-1,) + (1,) * nd), b.e))


def _bound(x: Dy, w: Dy):
    if x.a.size and w.a.size and float(np.abs(x.a).max()) * float(np.abs(w.a).sum()) >= LIMIT:
        raise OverflowError("a weighted sum may leave int64's range")


def linear(x: Dy, w: Dy, b: Dy | None) -> Dy:
    _bound(x, w)
    y = Dy(x.a @ w.a.T, x.e + w.e)
    return y if b is None else add(y, b)


def max_pool(x: Dy, k, s, p, d, ceil_mode, nd) -> Dy:
    if ceil_mode:
        raise NotImplementedError("ceil_mode max-pool")
    k, p, d = _tup(k, nd), _tup(p, nd), _tup(d, nd)
    s = _tup(s, nd) if s not in (None, [], ()) else k
    win = _windows(x.a, k, s, d, np.iinfo(np.int64).min, p)
    return Dy(win.reshape(win.shape[:2 + nd] + (-1,)).max(-1), x.e)


def _log2(n: int) -> int:
    if n <= 0 or n & (n - 1):
        raise NotImplementedError(f"an average over {n} elements (not a power of two)")
    return n.bit_length() - 1


def avg_pool(x: Dy, k, s, p, ceil_mode, include_pad, divisor, nd) -> Dy:
    k, p = _tup(k, nd), _tup(p, nd)
    s = _tup(s, nd) if s not in (None, [], ()) else k
    if ceil_mode or (any(p) and not include_pad):
        raise NotImplementedError("avg-pool in ceil mode or without counting padding")
    win = _windows(x.a, k, s, (1,) * nd, 0, p)
    n = divisor or math.prod(k)
    return Dy(win.reshape(win.shape[:2 + nd] + (-1,)).sum(-1), x.e + _log2(n))


def adaptive_avg(x: Dy, out) -> Dy:
    nd = x.a.ndim - 2
    out = _tup(out, nd)
    out = tuple(x.a.shape[2 + i] if o is None else o for i, o in enumerate(out))
    a, e = x.a, x.e
    for i, o in enumerate(out):
        n = a.shape[2 + i]
        if n % o:
            raise NotImplementedError("adaptive pooling with unequal windows")
        a = a.reshape(a.shape[:2 + i] + (o, n // o) + a.shape[3 + i:]).sum(3 + i)
        e += _log2(n // o)
    return Dy(a, e)


# ---------------------------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------------------------


def _dec(v, env):
    # serialize._dec's reading of the same tags, repeated on purpose: this file runs without torch
    # (and without the package), so it cannot import serialize
    if isinstance(v, list):
        return [_dec(a, env) for a in v]
    if not isinstance(v, dict):
        return v
    (tag, a), = v.items()
    if tag == "node":
        return env[a]
    if tag == "tuple":
        return tuple(_dec(b, env) for b in a)
    if tag == "dict":
        return {k: _dec(b, env) for k, b in a.items()}
    if tag == "slice":
        return slice(*(_dec(b, env) for b in a))
    if tag == "float":
        return float(a)
    if tag == "ellipsis":
        return Ellipsis
    raise NotImplementedError(f"value tag {tag}")


class Bundle:
    def __init__(self, directory):
        directory = Path(directory)
        self.doc = json.loads((directory / "bundle.json").read_text())
        if self.doc.get("format") != "spikeconverter-bundle" or self.doc.get("version") != 1:
            raise ValueError(f"{directory} is not a version-1 spikeconverter bundle")
        with np.load(directory / "tensors.npz") as z:
            self.t = {k: z[k] for k in z.files}
        self.T, self.beta = self.doc["timesteps"], self.doc["beta"]
        self.nodes = {n["name"]: n for n in self.doc["graph"]}
        self.modules = self.doc["modules"]

    def dy(self, key) -> Dy:
        return Dy(self.t[key + ".int"], int(self.t[key + ".exp"]))

    # -- one node of a region ------------------------------------------------------------------
    def _call(self, n, args, kwargs, with_bias):
        op, tgt = n["op"], n["target"]
        if op == "call_module":
            cfg, cls = self.modules[tgt]["args"], self.modules[tgt]["class"]
            cfg = {k: _dec(v, {}) for k, v in cfg.items()}
            x = args[0]
            if cls.startswith("Conv"):
                b = self.dy(f"{tgt}.bias") if (with_bias and cfg["bias"]) else None
                return conv(x, self.dy(f"{tgt}.weight"), b, cfg)
            if cls == "Linear":
                return linear(x, self.dy(f"{tgt}.weight"), self.dy(f"{tgt}.bias") if with_bias and cfg["bias"] else None)
            if cls.startswith("MaxPool"):
                return max_pool(x, cfg["kernel_size"], cfg["stride"], cfg["padding"], cfg["dilation"],
                                cfg["ceil_mode"], int(cls[-2]))
            if cls.startswith("AvgPool"):
                return avg_pool(x, cfg["kernel_size"], cfg["stride"], cfg["padding"], cfg["ceil_mode"],
                                cfg["count_include_pad"], cfg.get("divisor_override"), int(cls[-2]))
            if cls.startswith("AdaptiveAvgPool"):
                return adaptive_avg(x, cfg["output_size"])
            if cls == "Flatten":
                return _flatten(x, cfg["start_dim"], cfg["end_dim"])
            raise NotImplementedError(f"module {cls}")
        name = tgt.rsplit(".", 1)[-1] if op == "call_function" else tgt
        if name in ("add", "iadd", "sub", "isub"):
            sign = -1 if "sub" in name else 1
            a, b = args[0], args[1]
            if isinstance(a, Dy) and isinstance(b, Dy):
                return add(a, b, sign)
            if not isinstance(a, Dy) and not isinstance(b, Dy):
                return operator.add(a, b) if sign == 1 else operator.sub(a, b)
            if not with_bias:
                return a if isinstance(a, Dy) else Dy(sign * b.a, b.e)
            x, c = (a, b) if isinstance(a, Dy) else (b, a)
            return add(x, Dy(np.full(x.a.shape, from_float(float(c)).a), from_float(float(c)).e),
                       sign if isinstance(a, Dy) else 1)
        if name in ("mul", "floordiv", "truediv", "mod") and not any(isinstance(v, Dy) for v in args):
            return getattr(operator, name)(*args)
        if name == "getattr":
            a, attr = args
            return tuple(a.a.shape) if attr == "shape" else getattr(a, attr)
        if name == "getitem":
            a, idx = args
            return Dy(a.a[idx], a.e) if isinstance(a, Dy) else a[idx]
        if name in ("size",):
            a = args[0]
            return a.a.shape if len(args) == 1 else a.a.shape[args[1]]
        if name == "cat" or name == "concat":
            xs = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            e = max(x.e for x in xs)
            return Dy(np.concatenate([x.at(e) for x in xs], dim), e)
        if name in ("flatten",):
            return _flatten(args[0], kwargs.get("start_dim", args[1] if len(args) > 1 else 0),
                            kwargs.get("end_dim", args[2] if len(args) > 2 else -1))
        if name in ("reshape", "view"):
            shape = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
            return Dy(args[0].a.reshape(tuple(int(s) for s in shape)), args[0].e)
        if name in ("max_pool1d", "max_pool2d"):
            nd = int(name[-2])
            k = kwargs.get("kernel_size", args[1] if len(args) > 1 else None)
            s = kwargs.get("stride", args[2] if len(args) > 2 else None)
            p = kwargs.get("padding", args[3] if len(args) > 3 else 0)
            d = kwargs.get("dilation", args[4] if len(args) > 4 else 1)
            return max_pool(args[0], k, s, p, d, kwargs.get("ceil_mode", False), nd)
        if name in ("adaptive_avg_pool1d", "adaptive_avg_pool2d"):
            return adaptive_avg(args[0], kwargs.get("output_size", args[1] if len(args) > 1 else None))
        raise NotImplementedError(f"{op} {tgt}")

    def region(self, reg: dict, values: dict, with_bias: bool):
        env = dict(values)
        for name in reg["nodes"]:
            n = self.nodes[name]
            args, kwargs = _dec(n["args"], env), _dec(n["kwargs"], env)
            env[name] = self._call(n, args, kwargs, with_bias or n.get("shape_value", False))
        return env[reg["value"]]

    # -- the network -----------------------------------------------------------------------------
    def run(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits (float64) and spikes per sample of each layer for inputs x [B, ...] (float)."""
        b2 = self.beta == 2
        ex = self.doc["input_bits"]
        xin = Dy(np.round(np.asarray(x, dtype=np.float64) * 2.0**ex).astype(np.int64), ex)
        B = xin.a.shape[0]
        analog = {self.doc["input"]: xin}
        trains: dict = {}  # source -> int64 spikes [T of that source, B, ...]
        counts = {}
        logits = None
        for item in self.doc["order"]:
            kind, name = item["kind"], item["name"]
            layer = self.doc["layers"].get(name)
            T = layer.get("timesteps", self.T) if layer is not None else self.T  # its own code length
            if kind == "coder":
                trains[name] = self._code_input(name, layer, xin, T, b2)
                counts[layer["layer_name"]] = np.abs(trains[name]).reshape(T, B, -1).sum((0, 2))
            elif kind == "analog_pool":
                reg = self.doc["pools"][name]
                analog[name] = self.region(reg, {s: analog[s] for s in reg["sources"]}, True)
            elif kind == "train_pool":
                trains[name] = self._pool_trains(self.doc["pools"][name], trains)
            else:
                v = self._accumulate(name, layer, T, B, analog, trains, b2)
                if layer is None:  # the output
                    logits = v.float()
                    continue
                trains[name] = generate(v, self.dy(f"{name}.theta"), T, b2)
                if "slope" in layer:  # leaky: ON - OFF (they never both fire: spikes = |ON - OFF|)
                    trains[name] = trains[name] - generate(self._off_start(name, layer, v, T, b2),
                                                           self.dy(f"{name}.theta"), T, b2)
                counts[layer["layer_name"]] = np.abs(trains[name]).reshape(T, B, -1).sum((0, 2))
        return logits, counts

    def _code_input(self, name: str, layer: dict, xin: Dy, T: int, b2: bool) -> np.ndarray:
        """Spike-coded input: ON spikes code x+, OFF spikes x-, each a greedy train; ON - OFF."""
        th = self.dy(f"{name}.theta")
        v = add(xin, self.dy(f"{name}.shift")) if "shift" in layer else xin
        off = self._offset(name, layer, T, b2)
        return generate(add(v, off), th, T, b2) - generate(add(Dy(-v.a, v.e), off), th, T, b2)

    def _offset(self, name: str, layer: dict, T: int, b2: bool) -> Dy:
        """The layer's offset phi theta beta^-T (phi = 1/2, at its own T), or 0."""
        if not layer["phi"]:
            return Dy(0, 0)
        th = self.dy(f"{name}.theta")
        return Dy(th.a, th.e + (T if b2 else 0) + 1)

    def _off_start(self, name: str, layer: dict, v: Dy, T: int, b2: bool) -> Dy:
        """A leaky layer's OFF population starts its generate phase at -slope * (v - offset) + offset:
        it codes -slope * z with the layer's threshold (its input weights are -slope times the ON's)."""
        off = self._offset(name, layer, T, b2)
        z, s = add(v, off, -1), self.dy(f"{name}.slope")
        if z.a.size and s.a.size and int(np.abs(z.a).max()) * int(np.abs(s.a).max()) >= LIMIT:
            raise OverflowError("a potential leaves int64's range: use fewer time steps")
        return add(Dy(-(z.a * s.a), z.e + s.e), off)

    def _pool_trains(self, reg: dict, trains: dict) -> np.ndarray:
        """A max-pool over one layer's trains, on the words of the digits so far (engine.py)."""
        words = {s: np.zeros(trains[s].shape[1:], np.int64) for s in reg["sources"]}
        prev, out = None, []
        for t in range(max(trains[s].shape[0] for s in reg["sources"])):
            for s in reg["sources"]:
                words[s] = words[s] * 2 + trains[s][t]
            pooled = self.region(reg, {s: Dy(w, 0) for s, w in words.items()}, True).a
            out.append(pooled if prev is None else pooled - 2 * prev)
            prev = pooled
        return np.stack(out)

    def _accumulate(self, name: str, layer, T: int, B: int, analog: dict, trains: dict, b2: bool) -> Dy:
        """A sink's accumulate phase: the potential after it (bias, shift and offset included)."""
        reg = self.doc["regions"][name]
        zeros = {s: Dy(np.zeros((B,) + tuple(self.doc["shapes"][s]), np.int64), 0) for s in reg["sources"]}
        # accumulate for as many steps as the longest input train (trains start together, at
        # their most significant digit); fed only by the analog input: the layer's own T
        n = max((trains[s].shape[0] for s in reg["sources"] if s not in analog), default=T)
        v = self.region(reg, zeros, True)  # the bias map
        if layer is not None:
            if "shift" in layer:
                v = add(v, self.dy(f"{name}.shift"))
            if layer["phi"]:
                v = add(v, self._offset(name, layer, T, b2))
        v = Dy(v.a, v.e + (n if b2 else 0))  # scaled by beta^-n: n accumulate steps bring it back
        for t in range(n):
            vals, active = {}, False
            for s in reg["sources"]:
                if s in analog:
                    if t == 0:
                        vals[s] = Dy(analog[s].a, analog[s].e + (n - 1 if b2 else 0))
                        active = True
                    else:
                        vals[s] = zeros[s]
                elif t < trains[s].shape[0]:
                    th = self.dy(f"{s}.theta_map")
                    vals[s] = Dy(trains[s][t] * th.a, th.e + (n if b2 else 0))
                    active = True
                else:  # a shorter train has ended
                    vals[s] = zeros[s]
            v = Dy(v.a * 2, v.e) if b2 else v
            if active:
                v = add(v, self.region(reg, vals, False))
        return v


def generate(v: Dy, theta: Dy, T: int, b2: bool) -> np.ndarray:
    """The generate phase: T steps of V <- beta V; spike where V >= theta; V -= theta. [T, ...] 0/1."""
    e = max(v.e, theta.e)
    va, ta = v.at(e), theta.at(e)
    spikes = []
    for _ in range(T):
        # V >= 2 theta spikes at every later step and V < 0 never does: holding V in [-1, 2 theta]
        # changes no spike and keeps 2V inside int64 (the float engine lets it grow; only the
        # spikes leave a layer)
        va = np.clip(va, -1, 2 * ta)
        if b2:
            va = _checked(va * 2, va, 1)
        s = va >= ta
        va = va - np.where(s, ta, 0)
        spikes.append(s.astype(np.int64))
    return np.stack(spikes)


def _flatten(x: Dy, start, end) -> Dy:
    a = x.a
    end = end % a.ndim
    return Dy(a.reshape(a.shape[:start] + (-1,) + a.shape[end + 1:]), x.e)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="run a spikeconverter integer bundle on inputs (NumPy only)")
    ap.add_argument("bundle")
    ap.add_argument("inputs", help=".npy array [batch, ...] of normalised inputs")
    ap.add_argument("--out", default=None, help="write the logits here (.npy)")
    args = ap.parse_args(argv)
    logits, counts = Bundle(args.bundle).run(np.load(args.inputs))
    if args.out:
        np.save(args.out, logits)
    print("predictions:", logits.argmax(1).tolist())
    for k, c in counts.items():
        print(f"{k}: {c.tolist()} spikes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
