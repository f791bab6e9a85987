"""The speculative-decoder suite: on a tiny random Llama (CPU), the decoder's proposals are
well-formed trees within each request's budget, greedy output equals plain decoding token for token
(a batch of mixed lengths with repeated text, joined by requests mid-run; page sizes 1 and 4; serial
and overlap scheduling), and the KV pool, the request rows and the radix tree return to idle.

A decoder that needs files to run (a draft checkpoint, a head) writes them in `kit_settings`.
"""
from __future__ import annotations

import functools
import tempfile

import torch

from jackfield.testing.kit import Check, KitTarget, expect
from jackfield.testing.suites.common import runs_on_device

VOCAB = 128
MAX_NEW = 24


@functools.lru_cache(maxsize=None)
def tiny_target(head_dim: int = 16, num_heads: int = 4, num_kv_heads: int = 2, gain: float = 4.0) -> str:
    """A 2-layer random Llama (saved once per process and geometry) without a tokenizer. Kernels
    built for a few head widths (FlashInfer: 64, 128, 256) take a wider head_dim; `gain` scales the
    random weights (larger: more peaked predictions)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tempfile.mkdtemp(prefix="jackfield-kit-spec-")
    cfg = LlamaConfig(hidden_size=num_heads * head_dim, num_hidden_layers=2, num_attention_heads=num_heads,
                      num_key_value_heads=num_kv_heads, head_dim=head_dim,
                      vocab_size=VOCAB, intermediate_size=128, max_position_embeddings=1024, eos_token_id=0,
                      bos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # weights large enough for peaked, varied predictions
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.6 / p.shape[1] ** 0.5 * gain)
    model.save_pretrained(path)
    return path


def workload() -> list[tuple[str, list[int], int, int]]:
    """(rid, prompt, max_new_tokens, step at which it joins): repeated patterns of mixed lengths."""
    out = []
    for i in range(6):
        pattern = [2 + (7 * i + j) % (VOCAB - 2) for j in range(3 + i % 3)]
        out.append((f"k{i}", (pattern * (2 + i))[: 8 + 5 * i], MAX_NEW - 2 * (i % 3), 0 if i < 4 else 3))
    return out


def spec_scheduler(decoder_cls: type | None, model_dir: str, workdir: str, **settings):
    """A Scheduler on `model_dir` running `decoder_cls` (built like the engine builds the selected
    decoder), or plain decoding with None.

    In float32 (on a GPU too: greedy paths of the verify and the decode forward then do not split
    on bf16 near-ties), with a KV cache of an explicit size (on a GPU, sizing it from free memory
    would depend on whatever else runs there, e.g. other pytest-xdist workers)."""
    from jackfield.config import settings_for
    from jackfield.engine_loop import load_tokenizer
    from jackfield.model_runner import ModelRunner
    from jackfield.runtime_setup import setup_runtime
    from jackfield.scheduler.scheduler import Scheduler
    from jackfield.spec.setup import build_decoder

    settings.setdefault("device", "cpu")
    settings.setdefault("dtype", "float32")
    settings.setdefault("kv_cache_bytes", 1 << 30)
    settings.setdefault("cuda_graph_max_bs", 16)
    settings.setdefault("disable_overlap_schedule", True)
    settings.setdefault("max_total_tokens", 6000)
    settings.setdefault("max_running_requests", 16)
    if decoder_cls is not None:
        from jackfield.loader.source import resolve_model

        target_dir = str(resolve_model(model_dir).path)
        settings = {**decoder_cls.kit_settings(target_dir, workdir), "speculative_load_aware": False, **settings}
    setup = setup_runtime(settings_for(model=model_dir, **settings))
    runner = ModelRunner(setup, progress=False)
    decoder = build_decoder(setup, runner, decoder_cls) if decoder_cls is not None else None
    return Scheduler(runner, load_tokenizer(setup.settings, setup.source.path), decoder)


def run_workload(sched, jobs=None, max_steps: int = 5000, **params) -> dict[str, list[int]]:
    from jackfield.io_struct import TokenizedGenerateReq
    from jackfield.sampling.params import SamplingParams

    jobs = workload() if jobs is None else jobs
    out: dict[str, list[int]] = {rid: [] for rid, *_ in jobs}

    def collect(batches):
        for b in batches:
            for o in b.outputs:
                out[o.rid] += o.new_token_ids

    params.setdefault("temperature", 0.0)
    step = 0
    while step == 0 or sched.has_work() or any(join >= step for *_, join in jobs):
        for rid, ids, max_new, join in jobs:
            if join == step:
                collect(sched.handle(TokenizedGenerateReq(rid, ids, SamplingParams(max_new_tokens=max_new, **params))))
        collect(sched.step())
        step += 1
        expect(step < max_steps, f"the scheduler did not finish within {max_steps} steps")
    return out


def pool_idle_problem(sched) -> str | None:
    """Why the scheduler's memory is not back to idle, or None."""
    runner, tree = sched.runner, sched.tree_cache
    if sched.has_work():
        return "the scheduler still has work"
    if tree.protected_size():
        return f"{tree.protected_size()} cached tokens are still locked"
    free = runner.allocator.available_size() + tree.evictable_size()
    if free != runner.max_total_tokens:
        return f"{runner.max_total_tokens - free} of {runner.max_total_tokens} KV slots are neither free nor cached"
    rows = runner.req_to_token_pool
    if rows.available_size() != rows.size:
        return f"{rows.size - rows.available_size()} request rows are still held"
    return None


def _baseline(t: KitTarget, page_size: int) -> dict[str, list[int]]:
    with tempfile.TemporaryDirectory() as work:
        sched = spec_scheduler(None, tiny_target(), work, page_size=page_size, device=t.device)
        try:
            return run_workload(sched)
        finally:
            sched.close()


def _run_spec(t: KitTarget, page_size: int, overlap: bool, check_proposals: bool = False):
    with tempfile.TemporaryDirectory() as work:
        sched = spec_scheduler(t.cls, tiny_target(), work, page_size=page_size, disable_overlap_schedule=not overlap,
                               device=t.device)
        proposals = []
        if check_proposals:
            decoder, propose = sched.spec.decoder, sched.spec.decoder.propose

            def recording(spec_input):
                proposal = propose(spec_input)
                proposals.append((spec_input, proposal))
                return proposal

            decoder.propose = recording
        try:
            out = run_workload(sched)
            return out, sched, proposals
        finally:
            sched.close()


def _proposals_valid(t: KitTarget) -> None:
    from jackfield.spec.tree import ProposalError, VerifyTrees

    _, _, proposals = _run_spec(t, 1, False, check_proposals=True)
    expect(bool(proposals), "propose was never called during a run of repetitive prompts")
    nodes = 0
    for spec_input, proposal in proposals:
        roots = [ids[-1] for ids in spec_input.token_ids]
        try:
            trees = VerifyTrees.from_proposal(roots, proposal, spec_input.max_drafts, VOCAB, t.name)
        except ProposalError as exc:
            raise AssertionError(str(exc)) from None
        nodes += sum(trees.sizes) - len(roots)
    expect(nodes > 0, "no draft token was proposed over a whole run of repetitive prompts")


def _greedy_equal(t: KitTarget, page_size: int, overlap: bool) -> None:
    want = _baseline(t, page_size)
    got, sched, _ = _run_spec(t, page_size, overlap)
    for rid in want:
        expect(got[rid] == want[rid], f"request {rid} (page size {page_size}, overlap {overlap}): speculative output "
                                      f"{got[rid]} differs from plain greedy {want[rid]}")
    expect(sched.spec.stats.verify_steps > 0, "no speculative step ran")


def _kv_idle(t: KitTarget) -> None:
    _, sched, _ = _run_spec(t, 4, True)
    why = pool_idle_problem(sched)
    expect(why is None, f"after the run: {why}")


def checks(target: KitTarget) -> list[Check]:
    return [
        Check("proposes well-formed draft trees within each request's budget", _proposals_valid, runs_on_device),
        Check("greedy output equals plain decoding (page size 1, serial scheduling)",
              lambda t: _greedy_equal(t, 1, False), runs_on_device),
        Check("greedy output equals plain decoding (page size 4, overlap scheduling)",
              lambda t: _greedy_equal(t, 4, True), runs_on_device),
        Check("the KV pool, request rows and radix tree return to idle", _kv_idle, runs_on_device),
    ]
