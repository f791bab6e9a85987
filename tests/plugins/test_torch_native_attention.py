"""The `torch_native` attention backend against the float32 reference on CPU, with q as the model
passes it: contiguous, and a row-strided view (a column slice of the fused qkv output)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu"))
from attn_harness import AttnProblem, relative_error, row_strided  # noqa: E402

from jackfield_plugins.attention.torch_native import TorchNativeBackend  # noqa: E402


@pytest.mark.parametrize("layout", ["contiguous", "row_strided"])
@pytest.mark.parametrize("gqa, page_size, layer_kw", [(1, 1, {}), (4, 4, {}), (2, 2, {"sliding_window": 7})])
def test_extend_then_decode_match_reference(layout, gqa, page_size, layer_kw):
    p = AttnProblem([0, 11, 5], [9, 4, 1], 2 * gqa, 2, 16, page_size, torch.float32, "cpu", seed=gqa)
    backend, layer = TorchNativeBackend(p.runtime()), p.layer(**layer_kw)
    shape = row_strided if layout == "row_strided" else (lambda q: q)
    for fb, q, k, v in (p.extend_batch(backend), p.decode_batch(backend)):
        backend.init_forward_metadata(fb)
        out = backend.forward(shape(q), k, v, layer, fb)
        assert out.shape == q.shape and torch.isfinite(out).all()
        assert relative_error(out, p.reference(q, fb, layer)) < 1e-5


TREES = [[-1, 0, 0, 1, 1, 2, 4], [-1, 0, 1, 2], [-1]]  # a branching tree, a chain, a lone root


@pytest.mark.parametrize("gqa, page_size, layer_kw", [(1, 1, {}), (4, 4, {}), (2, 2, {"sliding_window": 9})])
def test_verify_attends_to_prefix_and_tree_ancestors(gqa, page_size, layer_kw):
    """TARGET_VERIFY: each draft-tree node sees its request's prefix and its own path only."""
    p = AttnProblem([5, 12, 3], [len(t) for t in TREES], 2 * gqa, 2, 16, page_size, torch.float32, "cpu", seed=7)
    backend, layer = TorchNativeBackend(p.runtime()), p.layer(**layer_kw)
    fb, q, k, v = p.verify_batch(backend, TREES)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, layer, fb)
    assert relative_error(out, p.tree_reference(q, fb, layer, TREES)) < 1e-5
    # a chain verifies exactly like an extend of the same tokens
    chain = [list(range(-1, n - 1)) for n in p.new_lens]
    fb_chain, *_ = p.verify_batch(backend, chain)
    extend, *_ = p.extend_batch(backend)
    ref = backend.forward(q, k, v, layer, extend)
    assert relative_error(backend.forward(q, k, v, layer, fb_chain), ref) < 1e-6
