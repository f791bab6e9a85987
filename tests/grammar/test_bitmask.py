"""The grammar bitmask applied to logits: the torch op against a per-token reference, the Triton
kernel under Triton's CPU interpreter (a child process) and on CUDA (gpu), and the sampler's order:
penalties, then the mask, then logit_bias."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from jackfield.constrained.bitmask import StepMask, apply_bitmask
from jackfield.sampling.batch import SamplingBatch
from jackfield.sampling.params import SamplingParams
from jackfield.sampling.sampler import Sampler
from jackfield.sdk.grammar import allocate_bitmask


def random_mask(rows: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(bitmask in the SDK format, the same mask as bools [rows, vocab])."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.rand(rows, vocab, generator=g) < 0.3
    words = allocate_bitmask(rows, vocab).shape[1]
    padded = torch.nn.functional.pad(allowed, (0, words * 32 - vocab)).view(rows, words, 32).long()
    packed = (padded << torch.arange(32)).sum(-1)
    return ((packed + 2**31) % 2**32 - 2**31).to(torch.int32), allowed


@pytest.mark.parametrize("vocab", [64, 1000, 49152])
def test_torch_op_matches_reference(vocab):
    bitmask, allowed = random_mask(5, vocab, vocab)
    logits = torch.randn(5, vocab)
    ref = torch.where(allowed, logits, torch.tensor(float("-inf")))
    apply_bitmask(logits, bitmask)
    assert torch.equal(logits, ref)


def test_sampler_order_penalties_mask_bias():
    """A banned token stays banned even with a large logit_bias; the mask only bans."""
    vocab = 96
    params = [SamplingParams(temperature=0.0, logit_bias=((5, 100.0),)), SamplingParams(temperature=0.0)]
    batch = SamplingBatch.from_params(params, [0, 1], vocab, (0,), "cpu")
    sampler = Sampler(vocab, 4, "cpu")
    logits = torch.zeros(2, vocab)
    logits[:, 7] = 3.0
    bitmask = allocate_bitmask(2, vocab)
    bitmask[0, 0] = 1 << 9 | 1 << 5  # row 0: tokens 5 and 9
    bitmask[0, 0] &= ~torch.tensor(1 << 5, dtype=torch.int32)  # then 5 is banned: bias cannot revive it
    out = sampler.sample(logits, batch, torch.zeros(2, dtype=torch.int64), bitmask=bitmask)
    assert out.next_token_ids.tolist() == [9, 7]


class _Row:
    def __init__(self, allowed: list[int], finished: bool = False):
        self.finished, self.allowed = finished, allowed
        self.grammar = self

    def is_terminated(self):
        return False

    def fill_bitmask(self, bitmask, row):
        bitmask[row].zero_()
        for t in self.allowed:
            bitmask[row, t // 32] |= 1 << t


def test_step_mask_fills_only_live_grammar_rows():
    buffer = torch.zeros(8, 2, dtype=torch.int32)
    mask = StepMask([(0, _Row([3])), (2, _Row([4], finished=True))], batch_size=3)
    mask.fill(buffer, torch.device("cpu"))
    got = mask.wait()
    assert got.shape == (3, 2) and got[0, 0] == 1 << 3
    assert bool((got[1] == -1).all() and (got[2] == -1).all())  # no grammar / finished: all allowed


CHILD = textwrap.dedent("""
    import json, torch
    from jackfield.kernels.bitmask import apply_bitmask_triton
    from jackfield.constrained.bitmask import apply_bitmask
    torch.manual_seed(0)
    worst = 0
    for rows, vocab in ((1, 100), (3, 4096 + 77), (2, 9000)):
        words = (vocab + 31) // 32
        bitmask = torch.randint(-2**31, 2**31 - 1, (rows, words), dtype=torch.int32)
        logits = torch.randn(rows, vocab)
        ref = logits.clone()
        apply_bitmask(ref, bitmask)
        apply_bitmask_triton(logits, bitmask)
        worst = max(worst, int((torch.isinf(ref) != torch.isinf(logits)).sum()),
                    float((ref[~torch.isinf(ref)] - logits[~torch.isinf(ref)]).abs().max()))
    print(json.dumps({"mismatches": worst}))
""")


def test_triton_kernel_interpreted():
    pytest.importorskip("triton", reason="triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"mismatches": 0}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,vocab", [(1, 128256), (32, 128256), (7, 49152)])
def test_triton_kernel_on_cuda(dtype, rows, vocab):
    from jackfield.kernels.bitmask import apply_bitmask_triton

    bitmask, allowed = random_mask(rows, vocab, rows)
    logits = torch.randn(rows, vocab, device="cuda", dtype=dtype)
    ref = torch.where(allowed.cuda(), logits, torch.tensor(float("-inf"), device="cuda", dtype=dtype))
    apply_bitmask_triton(logits, bitmask.cuda())
    assert torch.equal(logits, ref)
