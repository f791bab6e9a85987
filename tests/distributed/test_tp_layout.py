"""Bad parallel sizes and unreachable rendezvous addresses fail at startup with an error naming the
values, on every rank, without leaving a rank waiting."""
from __future__ import annotations

import time

import pytest
import torch

from jackfield.distributed.group import JoinError, free_loopback_addr, join
from jackfield.distributed.layout import LayoutError, ParallelLayout
from jackfield.engine import Engine
from jackfield.sdk.model_config import ModelConfig
from jackfield.config import settings_for
from tp_harness import ENGINE, save_model


def config(heads=4, kv=2, experts=0) -> ModelConfig:
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
          "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": 100, "intermediate_size": 128}
    if experts:
        hf.update(num_local_experts=experts, num_experts_per_tok=2)
    return ModelConfig.from_hf(hf)


@pytest.mark.parametrize("layout, visible, message", [
    (ParallelLayout(tp_size=4), 2, "4 ranks per node (tp_size 4 / nnodes 1) but only 2 CUDA device(s)"),
    (ParallelLayout(tp_size=3, nnodes=2, dist_init_addr="127.0.0.1:5000"), None, "tp_size 3 is not a multiple of nnodes 2"),
    (ParallelLayout(tp_size=2, nnodes=2), None, "nnodes 2 needs --dist-init-addr"),
    (ParallelLayout(tp_size=2, nnodes=2, node_rank=2, dist_init_addr="h:1"), None, "node_rank 2 must be below nnodes 2"),
    (ParallelLayout(tp_size=2, dist_init_addr="nohost"), None, "dist_init_addr 'nohost' must be host:port"),
    (ParallelLayout(tp_size=4, ep_size=2), None, "ep_size 2 must be 1 or equal to tp_size 4"),
])
def test_bad_sizes_are_named(layout, visible, message):
    with pytest.raises(LayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layout.check(visible)


@pytest.mark.parametrize("tp, heads, kv, experts, ep, message", [
    (3, 6, 6, 0, 1, None),  # fits: 2 heads and 2 KV heads per rank
    (4, 6, 2, 0, 1, "tp_size 4 does not divide the model's 6 attention heads"),
    (4, 8, 3, 0, 1, "tp_size 4 does not divide the model's 3 KV heads, nor is it a multiple of them"),
    (2, 4, 2, 8, 1, "an MoE model at tp_size 2 needs --ep-size 2"),
    (4, 4, 4, 6, 4, "ep_size 4 does not divide the model's 6 experts"),
])
def test_sizes_against_the_model(tp, heads, kv, experts, ep, message):
    layout = ParallelLayout(tp_size=tp, ep_size=ep)
    settings = settings_for(tp_size=tp, ep_size=ep)
    if message is None:
        layout.check_model(config(heads, kv, experts), False, settings)
        return
    with pytest.raises(LayoutError, match=message):
        layout.check_model(config(heads, kv, experts), False, settings)


def test_engine_refuses_a_tp_size_that_does_not_divide_the_heads(tmp_path):
    save_model(tmp_path)
    with pytest.raises(LayoutError, match="tp_size 3 does not divide the model's 4 attention heads"):
        Engine(str(tmp_path), tp_size=3, **ENGINE)


def test_unreachable_rendezvous_fails_the_joining_rank():
    addr = free_loopback_addr()  # nobody listens there
    start = time.monotonic()
    with pytest.raises(JoinError, match=f"rank 1 could not reach node 0 at --dist-init-addr {addr} within 1 s"):
        join(ParallelLayout(tp_size=2, nnodes=2, node_rank=1, dist_init_addr=addr, timeout_s=1), 1, addr,
             torch.device("cpu"))
    assert time.monotonic() - start < 30


def test_rank_zero_gives_up_on_a_rank_that_never_joins():
    addr = free_loopback_addr()
    with pytest.raises(JoinError, match=r"only 1 of 2 ranks joined .* within 1 s \(tp_size 2 over nnodes 2\)"):
        join(ParallelLayout(tp_size=2, nnodes=2, dist_init_addr=addr, timeout_s=1), 0, addr, torch.device("cpu"))


def test_rank_zero_stops_waiting_when_a_local_rank_died():
    addr = free_loopback_addr()
    with pytest.raises(JoinError, match="rank process jackfield-rank1 exited with code 1 before every rank joined"):
        join(ParallelLayout(tp_size=2, timeout_s=30), 0, addr, torch.device("cpu"),
             dead=lambda: "rank process jackfield-rank1 exited with code 1")

