"""The model suite: an architecture computes the same logits however the paged cache splits the work,
and the logits of transformers where transformers has the architecture.

The model is built on its `tiny_config()` by the engine's own startup code (`kit_runner`), with the
kit's reference attention and plain weights, and driven by `PagedDriver` the way the scheduler
drives it. Sequences are fixed random token ids. "Logits of a sequence" are the logits at every
position when the whole sequence is prefilled in one EXTEND forward on its own (page size 1);
every other way of computing them must agree within a relative error of 1e-4 per position
(float32), transformers' within 1e-3. A declared lower-precision dtype is compared with float32
under the same expert choices (the float32 run replays the other's routing, `routing_replay`).
"""
from __future__ import annotations

import torch

from jackfield.testing.kit import Check, KitFailure, KitTarget, expect
from jackfield.testing.paged_driver import PagedDriver
from jackfield.testing.routing_replay import record_routing, replay_routing
from jackfield.testing.suites.common import cannot_serve, runs_on_device
from jackfield.testing.tiny_models import hf_logits, kit_config, kit_runner, rel_err, tiny_checkpoint

CONSISTENCY_TOL = 1e-4
HF_TOL = 1e-3
DTYPE_TOL = {"float16": 2e-2, "bfloat16": 8e-2}
LEN_A, LEN_B = 24, 13   # two sequences; A is computed as a prefill of 9, a chunk of 8, 7 decodes
SPLIT = (9, 17)


def sequences(vocab: int) -> tuple[list[int], list[int]]:
    gen = torch.Generator().manual_seed(1234)
    return (torch.randint(0, vocab, (LEN_A,), generator=gen).tolist(),
            torch.randint(0, vocab, (LEN_B,), generator=gen).tolist())


def full_prefill(runner, seq: list[int]) -> torch.Tensor:
    """Logits at every position of `seq`, prefilled alone in one EXTEND forward: [len, vocab]."""
    driver = PagedDriver(runner)
    try:
        return driver.extend([seq])[0].float()
    finally:
        driver.release()


def _runner(t: KitTarget, dtype: str = "float32", page_size: int = 1):
    return kit_runner(t.cls, tiny_checkpoint(t.cls), t.device, dtype, page_size)


def _compare(ours: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    ours = ours.to(ref.device)  # transformers' reference runs on the CPU
    expect(tuple(ours.shape) == tuple(ref.shape), f"{what}: logits shape {tuple(ours.shape)}, expected {tuple(ref.shape)}")
    expect(bool(torch.isfinite(ours).all()), f"{what}: logits have NaN or inf")
    for pos in range(ref.shape[0]):
        err = rel_err(ours[pos], ref[pos])
        expect(err <= tol, f"{what}: position {pos}: relative error {err:.2e} > {tol:.0e}")


@torch.inference_mode()
def paged_consistency(t: KitTarget) -> None:
    """Sequence A as a prefill of 9 tokens beside a fresh sequence B (one batch), then a chunk of
    8 over A's cached 9 (not page-aligned), then 7 batched decodes of A beside B's decodes; at page
    sizes 1 and 4. Every position's logits must equal those of A's (B's) full prefill."""
    runner = _runner(t)
    vocab = runner.config.vocab_size
    seq_a, seq_b = sequences(vocab)
    ref_a, ref_b = full_prefill(runner, seq_a), full_prefill(runner, seq_b[:LEN_B] + seq_a[SPLIT[1]:])
    for page_size in (1, 4):
        runner = _runner(t, page_size=page_size)
        driver = PagedDriver(runner)
        free = runner.allocator.available_size()
        first = driver.extend([seq_a[:SPLIT[0]], seq_b])
        second = driver.extend([seq_a[SPLIT[0]:SPLIT[1]]], seqs=[0])
        rows_a, rows_b = list(first[0]) + list(second[0]), list(first[1])
        for tok in seq_a[SPLIT[1]:]:  # B is fed A's tail: any tokens do, the reference knows them
            out = driver.decode([tok, tok])
            rows_a.append(out[0])
            rows_b.append(out[1])
        driver.release()
        expect(runner.allocator.available_size() == free, f"page {page_size}: KV slots leaked after release")
        where = f"page size {page_size}"
        _compare(torch.stack(rows_a), ref_a, CONSISTENCY_TOL,
                 f"sequence A (prefill {SPLIT[0]}, chunk {SPLIT[1] - SPLIT[0]} over the cached prefix, "
                 f"{LEN_A - SPLIT[1]} decodes; {where}) vs its full prefill")
        _compare(torch.stack(rows_b), ref_b, CONSISTENCY_TOL, f"sequence B (batched beside A; {where}) vs its full prefill")


def _has_transformers(t: KitTarget) -> str | None:
    why = runs_on_device(t)
    if why:
        return why
    try:
        config = kit_config(t.cls)
    except TypeError as exc:
        return str(exc)
    if tiny_checkpoint(t.cls).hf_model is None:
        return f"transformers has no model of type {config.get('model_type')!r} to compare with"
    return None


@torch.inference_mode()
def loads_checkpoint(t: KitTarget) -> None:
    _runner(t)  # load_weights raises, naming the tensor, if a weight has no parameter or is missing


@torch.inference_mode()
def matches_transformers(t: KitTarget) -> None:
    """Full prefill of A, and A computed through the paged cache (prefill + decodes), vs
    transformers' logits for the same ids on the same weights."""
    hf = tiny_checkpoint(t.cls).hf_model
    runner = _runner(t)
    seq_a, _ = sequences(runner.config.vocab_size)
    ref = hf_logits(hf, seq_a)
    _compare(full_prefill(runner, seq_a), ref, HF_TOL, "full prefill vs transformers")
    driver = PagedDriver(runner)
    rows = list(driver.extend([seq_a[:SPLIT[1]]])[0])
    for tok in seq_a[SPLIT[1]:]:
        rows.append(driver.decode([tok])[0])
    driver.release()
    _compare(torch.stack(rows), ref, HF_TOL, f"prefill {SPLIT[1]} + {LEN_A - SPLIT[1]} decodes vs transformers")


@torch.inference_mode()
def runs_in_dtype(t: KitTarget, dtype: str) -> None:
    """The float32 run routes every token to the experts the `dtype` run chose (routing_replay): a
    near-tie that rounding flips is a discrete choice, not a precision error."""
    runner = _runner(t, dtype)
    seq = sequences(runner.config.vocab_size)[0]
    chosen = record_routing(runner.model)
    ours = full_prefill(runner, seq)
    reference = _runner(t)
    replay_routing(reference.model, chosen)
    ref = full_prefill(reference, seq)
    expect(bool(torch.isfinite(ours).all()), f"{dtype}: logits have NaN or inf")
    err = rel_err(ours.cpu(), ref.cpu())
    expect(err <= DTYPE_TOL[dtype], f"{dtype}: logits differ from float32 by relative error {err:.2e} > {DTYPE_TOL[dtype]:.0e}")


def _architectures(t: KitTarget) -> None:
    archs = t.cls.architectures
    expect(isinstance(archs, tuple) and archs and all(isinstance(a, str) and a for a in archs),
           f"`architectures` must be a non-empty tuple of Hugging Face architecture names, got {archs!r}")


def _tiny_config(t: KitTarget) -> None:
    from jackfield.sdk import ModelConfig

    try:
        config = kit_config(t.cls)
    except TypeError as exc:
        raise KitFailure(str(exc)) from exc
    try:
        ModelConfig.from_hf(config)
    except Exception as exc:
        raise KitFailure(f"ModelConfig.from_hf cannot read tiny_config(): {type(exc).__name__}: {exc}") from exc


def _buildable(t: KitTarget) -> str | None:
    why = runs_on_device(t)
    if why:
        return why
    try:
        kit_config(t.cls)
    except TypeError:
        return "no tiny config (see the check above)"
    return None


def checks(target: KitTarget) -> list[Check]:
    out = [Check("declares the Hugging Face architectures it serves", _architectures),
           Check("provides a tiny config to build the model on (tiny_config)", _tiny_config),
           Check("loads a checkpoint in Hugging Face naming (transformers' own weights)", loads_checkpoint,
                 _has_transformers),
           Check("prefill, chunked prefill over a cached prefix, batched decode and page sizes 1 and 4 "
                 "give the logits of one full prefill", paged_consistency, _buildable),
           Check("logits match transformers on the same weights (float32)", matches_transformers, _has_transformers)]
    for dtype in target.cls.capabilities.dtypes:
        if dtype != "float32":
            out.append(Check(f"declared dtype {dtype}: logits close to float32", lambda t, d=dtype: runs_in_dtype(t, d),
                             lambda t, d=dtype: _buildable(t) or cannot_serve(t, d)))
    return out
