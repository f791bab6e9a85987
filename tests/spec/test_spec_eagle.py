"""EAGLE heads: `jackfield spec train-eagle` end to end on a tiny target (with a resumed run), an
EAGLE-3 checkpoint in the published layout (fused low/mid/high features, a draft vocabulary mapped
by d2t) loading and decoding greedily equal to plain decoding, and the startup errors."""
from __future__ import annotations

import json

import pytest
import torch

from jackfield.testing.suites.speculative import pool_idle_problem, run_workload, spec_scheduler
from jackfield_plugins.spec.eagle import EagleDecoder


def test_train_eagle_resumes_and_its_head_drafts_what_the_target_says(tiny_target, tmp_path, capsys):
    """A short self-distillation (greedy continuations of the built-in prompts), interrupted and
    resumed, then resumed once more under a --time-limit that stops it after one step; the head it
    writes then drafts those continuations: accepted length well above an untrained head's (~1.0),
    outputs equal to plain decoding."""
    from jackfield.cli import main
    from jackfield_plugins.spec.eagle_train import prompts

    out = tmp_path / "head"
    args = ["spec", "train-eagle", "--model", tiny_target, "--out", str(out), "--samples", "16", "--max-new-tokens",
            "32", "--temperature", "0", "--batch-seqs", "8", "--lr", "3e-3", "--save-every", "50", "--device", "cpu"]
    assert main(args + ["--steps", "50"]) == 0
    assert {"config.json", "model.safetensors", "checkpoint.pt", "data.pt"} <= {p.name for p in out.iterdir()}
    assert main(args + ["--steps", "200"]) == 0
    text = capsys.readouterr().out
    assert "resuming from step 50" in text and "reusing 16 sequences" in text
    held = [float(line.split("agreement ")[1].split()[0]) for line in text.splitlines() if "held-out top-1" in line]
    assert len(held) == 4 and all(0 <= a <= 1 for a in held), held  # saves at 50 (first run), 100, 150, 200
    assert main(args + ["--steps", "5000", "--time-limit", "0.00001"]) == 0  # out of time after one step
    text = capsys.readouterr().out
    assert "reached at step 201 of 5000" in text and "held-out top-1" in text and "EAGLE head written" in text
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLMEagle"]
    jobs = [(f"e{i}", p, 24, 0) for i, p in enumerate(prompts(None, 16, 0)[:8])]
    plain = run_workload(spec_scheduler(None, tiny_target, str(tmp_path)), jobs)
    sched = spec_scheduler(EagleDecoder, tiny_target, str(tmp_path), speculative_draft_model_path=str(out),
                           speculative_eagle_topk=1, speculative_num_steps=4)
    assert run_workload(sched, jobs) == plain and pool_idle_problem(sched) is None
    assert sched.spec.stats.accept_length > 1.4, sched.spec.stats.accept_length
    # the target's LM head quantized (int8 codes): the head drafts through it in the model dtype
    quantized = {"quantization": "int8_wo", "quantize_lm_head": True}
    plain = run_workload(spec_scheduler(None, tiny_target, str(tmp_path), **quantized), jobs)
    sched = spec_scheduler(EagleDecoder, tiny_target, str(tmp_path), speculative_draft_model_path=str(out),
                           speculative_eagle_topk=1, speculative_num_steps=4, **quantized)
    lm = sched.runner.model.lm_head
    assert lm.weight.dtype == torch.int8
    h = torch.randn(3, lm.weight.shape[1])
    want = h @ (lm.weight.float() * lm.weight_scale[:, None]).T
    assert torch.allclose(sched.spec.decoder.head.logits(h), want, rtol=1e-3, atol=1e-3)
    assert run_workload(sched, jobs) == plain and sched.spec.stats.accept_length > 1.2, sched.spec.stats.accept_length


def test_train_step_cross_entropy_reads_the_sampled_positions_and_holdout_agreement_all():
    """`--ce-positions k`: the feature loss still covers every real position; the cross-entropy term
    is the mean over the k positions `randperm` picks (and over all of them when k covers them).
    The held-out agreement is the top-1 agreement over every position, in any batching."""
    import torch.nn.functional as F

    from jackfield.sdk import ModelConfig
    from jackfield_plugins.spec.eagle_head import EagleHead
    from jackfield_plugins.spec.eagle_train import _step, holdout_agreement

    hf = {"architectures": ["LlamaForCausalLMEagle"], "model_type": "llama", "hidden_size": 32,
          "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 8, "vocab_size": 50, "rms_norm_eps": 1e-6, "max_position_embeddings": 64}
    torch.manual_seed(0)
    head = EagleHead(ModelConfig.from_hf(hf), hf, 32, 64)
    embed, lm = torch.nn.Embedding(50, 32), torch.nn.Linear(32, 50, bias=False)
    head.share(embed, lm)
    seqs = [list(range(2, 14)), list(range(5, 12))]  # 11 + 6 = 17 real positions, right-padded
    feats = [torch.randn(len(s), 32) for s in seqs]

    def full_terms():
        h = torch.cat([head.features(torch.tensor(s[1:]), torch.arange(len(s) - 1), f[:-1], None)[0]
                       for s, f in zip(seqs, feats)])
        want = torch.cat([f[1:] for f in feats])
        ce = -(torch.log_softmax(want @ lm.weight.T, -1).exp() * torch.log_softmax(h @ lm.weight.T, -1)).sum(-1)
        agree = ((h @ lm.weight.T).argmax(-1) == (want @ lm.weight.T).argmax(-1)).float().mean()
        return F.smooth_l1_loss(h, want), ce, float(agree)

    vloss, ce, agree = full_terms()
    for batch_seqs in (1, 2):
        assert abs(holdout_agreement(head, lm.weight, seqs, feats, "cpu", batch_seqs) - agree) < 1e-6
    for k in (5, 17, 0):
        torch.manual_seed(k)
        loss, _, tokens = _step(head, lm.weight, seqs, feats, "cpu", 0.0, k)
        torch.manual_seed(k)
        picked = ce[torch.randperm(17)[:k]] if 0 < k < 17 else ce
        assert tokens == 17
        assert torch.allclose(loss, vloss + 0.1 * picked.mean(), atol=1e-5), (k, loss, vloss + 0.1 * picked.mean())
        if k == 5:  # the subset's mean is not the full mean: the check above tells sampling from reading all
            assert not torch.allclose(picked.mean(), ce.mean(), atol=1e-3)


def test_hidden_states_batches_within_the_request_table_and_the_pool(tiny_target):
    """More sequences than the request table has rows, more tokens than the pool holds: split into
    forwards that fit, each sequence's states equal to running it alone."""
    from jackfield.sdk import offline_target

    target = offline_target(tiny_target, device="cpu", max_running_requests=2, max_total_tokens=256)
    try:
        seqs = [[2 + (i * 7 + j) % 50 for j in range(40 + 10 * i)] for i in range(5)]  # 300 tokens, 5 rows
        states = target.hidden_states(seqs)
        assert [s.shape[0] for s in states] == [len(s) for s in seqs]
        alone = target.hidden_states(seqs[4:])[0]
        assert torch.allclose(states[4], alone, atol=1e-5)
    finally:
        target.close()


def write_eagle3(path, hidden: int, vocab: int, draft_vocab: int = 64) -> str:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    heads, kv, dim, inter = 4, 2, 16, 128

    def w(*shape):
        return torch.randn(*shape, generator=g) / shape[-1] ** 0.5

    tensors = {"fc.weight": w(hidden, 3 * hidden), "midlayer.self_attn.q_proj.weight": w(heads * dim, 2 * hidden),
               "midlayer.self_attn.k_proj.weight": w(kv * dim, 2 * hidden),
               "midlayer.self_attn.v_proj.weight": w(kv * dim, 2 * hidden),
               "midlayer.self_attn.o_proj.weight": w(hidden, heads * dim),
               "midlayer.mlp.gate_proj.weight": w(inter, hidden), "midlayer.mlp.up_proj.weight": w(inter, hidden),
               "midlayer.mlp.down_proj.weight": w(hidden, inter), "midlayer.input_layernorm.weight": torch.ones(hidden),
               "midlayer.hidden_norm.weight": torch.ones(hidden), "midlayer.post_attention_layernorm.weight":
               torch.ones(hidden), "norm.weight": torch.ones(hidden), "lm_head.weight": w(draft_vocab, hidden),
               "d2t": torch.arange(draft_vocab) * 0 + 2, "t2d": torch.zeros(vocab, dtype=torch.bool)}
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    config = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": hidden,
              "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": dim,
              "intermediate_size": inter, "vocab_size": vocab, "draft_vocab_size": draft_vocab,
              "target_hidden_size": hidden, "rms_norm_eps": 1e-6, "max_position_embeddings": 1024,
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": [0, 0, 0]}}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def test_eagle3_layout_loads_reads_aux_layers_and_decodes_exactly(tiny_target, tmp_path):
    head = write_eagle3(tmp_path / "e3", 64, 128)
    plain = run_workload(spec_scheduler(None, tiny_target, str(tmp_path)))
    sched = spec_scheduler(EagleDecoder, tiny_target, str(tmp_path), speculative_draft_model_path=head)
    dec = sched.spec.decoder
    assert dec.head.version == 3 and dec.aux_hidden_layers == (1, 1, 1)
    assert sched.runner.model.model.capture_layers == (1, 1, 1)
    proposed = []
    propose = dec.propose
    dec.propose = lambda si: proposed.append(propose(si)) or proposed[-1]
    assert run_workload(sched) == plain and pool_idle_problem(sched) is None
    drafted = torch.cat([p.tokens[i, :c] for p in proposed for i, c in enumerate(p.counts)])
    assert drafted.numel() and bool(((drafted >= 2) & (drafted < 66)).all())  # draft ids + d2t offset 2


def test_head_with_another_hidden_size_is_a_startup_error(tiny_target, tmp_path):
    head = write_eagle3(tmp_path / "e3", 32, 128)
    with pytest.raises(ValueError, match="expects target hidden size 32.*hidden size is 64"):
        spec_scheduler(EagleDecoder, tiny_target, str(tmp_path), speculative_draft_model_path=head)


def test_draft_model_with_another_vocabulary_is_a_startup_error(tiny_target, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from jackfield_plugins.spec.draft_model import DraftModelDecoder

    other = tmp_path / "draft"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 vocab_size=100, intermediate_size=64)).save_pretrained(str(other))
    with pytest.raises(ValueError, match="vocabulary size 100, the target has 128"):
        spec_scheduler(DraftModelDecoder, tiny_target, str(tmp_path), speculative_draft_model_path=str(other))


def test_unknown_algorithm_and_backend_without_verify_are_refused(tiny_target):
    from jackfield.config import settings_for
    from jackfield.runtime_setup import setup_runtime
    from jackfield.sdk import Capabilities, SelectionContext
    from jackfield.selection import SelectionError
    from jackfield_plugins.attention.torch_native import TorchNativeBackend

    with pytest.raises(SelectionError, match="no speculative component named 'medusa'.*draft_model, eagle, ngram"):
        setup_runtime(settings_for(model=tiny_target, device="cpu", speculative_algorithm="medusa"))

    class NoVerify(TorchNativeBackend):
        name = "no_verify"
        capabilities = Capabilities(devices=("cpu",), features=frozenset({"paged"}))

    ctx = SelectionContext(device="cpu", dtype="float32", required_features=frozenset({"spec_verify"}))
    assert "lacks required feature(s): spec_verify" in " ".join(NoVerify.incompatibilities(ctx))
    assert "has no speculative verify mode" in " ".join(NoVerify.incompatibilities(ctx))


def test_every_attention_backend_declares_its_verify_mode():
    """A backend declaring 'spec_verify' implements forward_verify; one that does not is refused for
    speculative decoding with its reason (fa3: FlashAttention-3 takes no arbitrary mask); `auto`
    passes over flashinfer's opt-in verify mode."""
    from dataclasses import replace

    from jackfield.plugins import load_plugins
    from jackfield.registry import build_registry
    from jackfield.sdk import AttentionBackend, SelectionContext

    infos = build_registry(*load_plugins(env={})).of_kind("attention")
    ctx = SelectionContext(device="cuda", dtype="bfloat16", compute_capability=(9, 0),
                           required_features=frozenset({"spec_verify"}))
    verifiers = set()
    for info in infos:
        cls = info.cls
        if "spec_verify" in cls.capabilities.features:
            assert cls.forward_verify is not AttentionBackend.forward_verify, cls.name
            verifiers.add(cls.name)
        else:
            assert cls.no_verify_reason, f"{cls.name} has no verify mode and does not say why"
            assert any("no speculative verify mode" in r for r in cls.incompatibilities(ctx)), cls.name
    assert {"torch_native", "triton", "flashinfer"} <= verifiers
    fa3 = next(i.cls for i in infos if i.name == "fa3")
    assert "FlashAttention-3's kernels take causal and local" in " ".join(fa3.incompatibilities(ctx))
    # flashinfer's verify mode runs when named; auto keeps triton for speculation (not verified end to end)
    by_name = {i.name: i.cls for i in infos}
    assert by_name["flashinfer"].incompatibilities(ctx) == [] and by_name["flashinfer"].auto_exclusions(ctx)
    assert by_name["flashinfer"].auto_exclusions(replace(ctx, required_features=frozenset())) == []
    assert by_name["triton"].auto_exclusions(ctx) == by_name["torch_native"].auto_exclusions(ctx) == []
