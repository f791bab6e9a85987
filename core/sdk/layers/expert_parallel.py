"""Expert parallelism: a layer's routed experts spread over the ranks, tokens moved by all-to-all.

`expert_parallel(dispatcher_cls, config, ep)` gives the MoE layer its dispatcher: the selected one
itself on one rank, else an `ExpertParallel` around it. Rank r holds experts
[r * E / size, (r + 1) * E / size) (the inner dispatcher sees only those, numbered from 0). Every
rank has every token (the attention before it is tensor-parallel and all-reduced), so each rank
routes all of them alike and then works on its own slice of the tokens:

  dispatch  each (token, expert) pair of the slice goes to the rank holding the expert
            (torch.distributed all_to_all_single, split sizes exchanged first);
  experts   the inner dispatcher's `experts` runs the pairs it received, weighted;
  combine   the results go back with the reverse all-to-all and are summed per token;
  gather    the ranks' token slices are all-gathered, so every rank again has every token.

The split sizes are read on the host, so a layer under expert parallelism is not captured in CUDA
graphs (the model runner turns them off).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from jackfield.sdk.moe import ExpertWeights, MoEConfig, route
from jackfield.sdk.parallel import ParallelGroup


def expert_parallel(dispatcher_cls, config: MoEConfig, ep: ParallelGroup):
    return dispatcher_cls(config) if not ep.enabled else ExpertParallel(dispatcher_cls, config, ep)


class ExpertParallel:
    """The MoE dispatcher interface (name, weight_formats, prepare_weights, forward) over `ep`'s ranks."""

    def __init__(self, dispatcher_cls, config: MoEConfig, ep: ParallelGroup):
        self.first, self.local = ep.split(config.num_experts, "experts")
        # the inner dispatcher runs (token, expert) pairs one at a time: k = 1 over the local experts
        routing = replace(config.routing, top_k=1, num_groups=1, topk_groups=1)
        self.inner = dispatcher_cls(replace(config, num_experts=self.local, routing=routing))
        self.config, self.ep = config, ep
        self.name, self.weight_formats = self.inner.name, self.inner.weight_formats

    def prepare_weights(self, weights: ExpertWeights) -> ExpertWeights:
        return self.inner.prepare_weights(weights)

    def holds(self, expert: int) -> bool:
        return self.first <= expert < self.first + self.local

    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor, weights: ExpertWeights,
                correction_bias: torch.Tensor | None = None) -> torch.Tensor:
        import torch.distributed as dist

        group, size = self.ep.group, self.ep.size
        topk_weights, topk_ids = route(router_logits, self.config.routing, correction_bias)
        total, k = topk_ids.shape
        chunk = -(-total // size)
        start, end = min(self.ep.rank * chunk, total), min((self.ep.rank + 1) * chunk, total)
        ids = topk_ids[start:end].reshape(-1).long()
        dest = ids // self.local
        order = torch.argsort(dest, stable=True)
        token_of = order // k
        send = torch.bincount(dest, minlength=size)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        send_split, recv_split = send.tolist(), recv.tolist()

        def exchange(x: torch.Tensor, out_rows: int, out_split, in_split) -> torch.Tensor:
            out = x.new_empty((out_rows, *x.shape[1:]))
            dist.all_to_all_single(out, x.contiguous(), out_split, in_split, group=group)
            return out

        n_recv = sum(recv_split)
        rows = exchange(hidden[start:end][token_of], n_recv, recv_split, send_split)
        local_ids = exchange((ids[order] - dest[order] * self.local).to(torch.int32), n_recv, recv_split, send_split)
        pair_weights = exchange(topk_weights[start:end].reshape(-1)[order].float(), n_recv, recv_split, send_split)
        if n_recv:
            done = self.inner.experts(rows, pair_weights[:, None], local_ids[:, None], weights)
        else:
            done = rows
        back = exchange(done, len(order), send_split, recv_split)
        out = torch.zeros((chunk, hidden.shape[1]), dtype=torch.float32, device=hidden.device)
        out.index_add_(0, token_of, back.float())
        return self.ep.all_gather(out, dim=0)[:total].to(hidden.dtype)
