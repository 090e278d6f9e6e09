"""When each spiking layer accumulates and generates, for time steps chosen per layer.

A layer with code length T_l generates its train in T_l steps, most significant spike first. A sink
(a layer or the output) accumulates while its sources generate: its trains all start together
(aligned at their most significant digit; a source that generated earlier -- a residual shortcut,
the shallow side of a concat -- is read from its stored train), and it accumulates for as many
steps as its longest input train. A source whose train is shorter sends nothing in the remaining
steps: scaled by beta^(-acc_length) each digit still lands on its own weight (engine.py). A layer
fed only by the analog input accumulates for its own T_l steps (the input enters once, at the
first), as with one T for all layers. Its train then starts when its accumulation ends.

With one T for every layer this is the familiar window schedule: a layer at spiking depth d
generates in steps [d*T, (d+1)*T), and one input's logits are final after (L+1)*T steps. With
per-layer T the end-to-end latency is the longest path through the schedule (the output's last
accumulate step), and streaming inputs follow one another every ``period`` = max_l T_l steps: every
accumulate and generate phase fits in one period, so each layer's two potentials (accumulating
input n+1, generating input n) never collide.

All times are for input 0; input n is shifted by n * period.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from .plan import GraphPlan


@dataclass(frozen=True)
class Schedule:
    code_length: dict[fx.Node, int]  # per train source: steps of its train (a max-pool: its layer's)
    gen_start: dict[fx.Node, int]  # per train source: its train's first step
    acc_start: dict[fx.Node, int]  # per sink (layers and the output): first accumulate step
    acc_length: dict[fx.Node, int]  # per sink: accumulate steps (its longest input train)
    period: int  # steps between streamed inputs: the longest code
    latency: int  # steps until one input's logits are final

    def reads_at(self, sink: fx.Node, source: fx.Node) -> int:
        """How many steps ``source``'s train waits before ``sink`` takes it (0: as it is made)."""
        return self.acc_start[sink] - self.gen_start[source]

    def last_read(self, source: fx.Node, consumers: list[fx.Node]) -> int:
        """The last step (input 0) at which any of ``consumers`` reads ``source``'s train: a sink
        while it accumulates, a max-pool while it forwards (a pool over a concat of branches of
        different depth forwards when the deepest generates, reading the others' stored trains)."""
        last = self.gen_start[source] + self.code_length[source] - 1
        for c in consumers:
            if c in self.acc_start:
                last = max(last, self.acc_start[c] + min(self.code_length[source], self.acc_length[c]) - 1)
            elif c in self.gen_start:  # a max-pool looks at every source in each of its steps
                last = max(last, self.gen_start[c] + self.code_length[c] - 1)
        return last


def schedule(plan: GraphPlan, timesteps: dict[fx.Node, int]) -> Schedule:
    """The schedule for code lengths ``timesteps`` (one per spiking layer and the input coder)."""
    code, gen, acc_start, acc_len = {}, {}, {}, {}
    if plan.coder is not None:
        code[plan.coder], gen[plan.coder] = timesteps[plan.coder], 0  # the image is its train, sent at once
    for n in plan.gm.graph.nodes:  # topological: every source is scheduled before its consumers
        if n in plan.pools and not plan.is_analog(n):
            srcs = plan.pools[n].sources  # the trains of one layer (plan._check_pool_region)
            code[n], gen[n] = max(code[s] for s in srcs), max(gen[s] for s in srcs)
        elif n in plan.regions:
            trains = [s for s in plan.regions[n].sources if not plan.is_analog(s)]
            own = timesteps.get(n, max(timesteps.values()))  # the output has no code: the longest
            acc_start[n] = max((gen[s] for s in trains), default=0)
            acc_len[n] = max((code[s] for s in trains), default=own)
            if n is not plan.output:
                code[n], gen[n] = own, acc_start[n] + acc_len[n]
    period = max(timesteps.values())
    return Schedule(code, gen, acc_start, acc_len, period, acc_start[plan.output] + acc_len[plan.output])
