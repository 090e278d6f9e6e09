"""Several processes (torchrun) on one evaluation, with exactly the numbers of one process.

    torchrun --nproc-per-node N -m spikeconverter.cli evaluate ...

- The network is converted once, on rank 0, and sent to the others as a network file's bytes
  (``snn.save`` / ``spikeconverter.load``: no pickle of code, bit for bit the same network).
- The test batches are dealt round robin (batch i to rank i mod N); each rank keeps, per batch, the
  figures one process would add up; rank 0 gathers them and adds them up *in batch order*, so
  accuracy, spikes, SOPs and energy equal a single-process run's bit for bit, not just to rounding.

Without torchrun (no WORLD_SIZE in the environment, or 1) every function here is the one-process
identity. The process group is gloo whatever the device: it only carries the network file once
and a few numbers per batch. On CUDA each rank takes the card of its LOCAL_RANK (``device.resolve``).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return world_size() > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if active() else 0


def setup() -> None:
    """Join the process group torchrun describes (once; no-op in a single process)."""
    if not active():
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def teardown() -> None:
    if active():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shared_network(build):
    """``build()`` on rank 0; every other rank gets the same network through its file's bytes."""
    if not active():
        return build()
    import torch.distributed as dist

    from .serialize import load

    payload = [None]
    snn = None
    if rank() == 0:
        snn = build()
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "net.snn"
            snn.save(path)
            payload = [path.read_bytes()]
    dist.broadcast_object_list(payload, src=0)  # bytes only: the receiver parses them with load()
    if rank() == 0:
        return snn
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "net.snn"
        path.write_bytes(payload[0])
        return load(path)


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if not active():
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def mine(i: int) -> bool:
    """Does batch ``i`` belong to this rank?"""
    return i % world_size() == rank()


def gather_in_order(items: list[tuple[int, object]]) -> list[object]:
    """Every rank's (batch index, record) pairs, as one list in batch order (on every rank)."""
    if not active():
        return [r for _, r in sorted(items, key=lambda t: t[0])]
    import torch.distributed as dist

    buf = io.BytesIO()
    torch.save(items, buf)  # plain numbers and dicts of them (weights_only load below)
    everything = [None] * world_size()
    dist.all_gather_object(everything, buf.getvalue())
    merged = []
    for blob in everything:
        merged += torch.load(io.BytesIO(blob), weights_only=True)
    return [r for _, r in sorted(merged, key=lambda t: t[0])]
