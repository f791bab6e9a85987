"""The kit's routing replay (jackfield.testing.routing_replay), on DeepSeek-V3's tiny kit model on
CPU: a float32 run that replays another float32 run's routing gives its logits exactly; a replayed
choice that differs at one token changes that token's logits (the replay really decides the experts);
the bfloat16 dtype check passes."""
from __future__ import annotations

import torch

from jackfield.sdk import RoutingConfig, route
from jackfield.sdk.moe import route_weights
from jackfield.testing.routing_replay import record_routing, replay_routing
from jackfield.testing.suites.model import full_prefill, runs_in_dtype, sequences
from jackfield.testing.kit import KitTarget
from jackfield.testing.tiny_models import kit_runner, tiny_checkpoint
from jackfield_plugins.models.deepseek_v3 import DeepseekV3ForCausalLM


def test_route_weights_of_the_reference_choice_are_its_weights():
    logits = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(16, generator=torch.Generator().manual_seed(1))
    routing = RoutingConfig(top_k=4, scoring="sigmoid", num_groups=4, topk_groups=2, group_scoring="top2_sum",
                            correction_bias=True, scaling_factor=2.5)
    weights, ids = route(logits, routing, bias)
    assert torch.equal(route_weights(logits, ids, routing), weights)


@torch.inference_mode()
def test_replayed_routing_decides_the_experts():
    cls = DeepseekV3ForCausalLM
    runner = lambda: kit_runner(cls, tiny_checkpoint(cls), "cpu", "float32")  # noqa: E731
    first = runner()
    seq = sequences(first.config.vocab_size)[0]
    chosen = record_routing(first.model)
    plain = full_prefill(first, seq)
    assert chosen and all(len(calls) == 1 for calls in chosen.values())

    same = runner()
    replay_routing(same.model, chosen)
    assert torch.equal(full_prefill(same, seq), plain)

    last = max(chosen)  # the last MoE layer: a changed choice there reaches that position's logits only
    moved = {name: [ids.clone() for ids in calls] for name, calls in chosen.items()}
    ids = moved[last][0]
    ids[5] = torch.tensor([e for e in range(cls.tiny_config()["n_routed_experts"]) if e not in ids[5]][:ids.shape[1]])
    other = runner()
    replay_routing(other.model, moved)
    changed = (full_prefill(other, seq) - plain).abs().amax(-1) > 1e-3
    assert changed.nonzero().flatten().tolist() == [5]


def test_bfloat16_check_passes_under_replayed_routing():
    runs_in_dtype(KitTarget("model", DeepseekV3ForCausalLM, "cpu"), "bfloat16")
