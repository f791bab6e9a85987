"""The `triton` attention backend's kernels, run by Triton's CPU interpreter on tiny shapes.

TRITON_INTERPRET must be set before the kernels are defined, and setting it in this process would
also switch any later GPU test to the interpreter, so the cases run in one child process (this file
run as a script) and each pytest case checks its own result. Skipped where triton is not installed.
bfloat16 is left to the GPU tests: the interpreter's tl.dot misreads bfloat16 operands (triton 3.9).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
HARNESS_DIR = HERE.parent / "gpu"

# name: (prefix_lens, new_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, layer kwargs)
CASES = {
    "mha_d16_page1": ([0, 5, 19], [9, 3, 1], 2, 2, 16, 1, "float32", {}),
    "gqa2_d32_page4": ([7, 0], [12, 20], 4, 2, 32, 4, "float32", {}),
    "gqa4_d24_page3_nonpow2": ([11, 2, 30], [5, 17, 2], 8, 2, 24, 3, "float32", {}),
    "long_prefix_splits": ([300, 150], [3, 70], 4, 1, 16, 16, "float32", {}),
    "sliding_window": ([40, 3], [30, 25], 4, 2, 16, 2, "float32", {"sliding_window": 9}),
    "logit_cap": ([20, 0], [10, 6], 4, 4, 16, 1, "float32", {"logit_cap": 0.5, "scaling": 1.7}),
    "float16": ([13, 4], [6, 9], 4, 2, 32, 4, "float16", {}),
    "fp8_kv_cache": ([13, 40], [6, 9], 4, 2, 32, 4, "float32", {}),  # K, V stored FP8 with scales 0.5, 2
}
FP8_KV = {"fp8_kv_cache": (0.5, 2.0)}
TOLERANCE = {"float32": 1e-4, "float16": 5e-3}


def run_case(name: str) -> dict:
    """Extend, eager decode (its splits merged by the last split, and by the merge kernel), decode
    without host lengths, speculative verify (a tree mask) and graph-style decode and verify for one
    case."""
    import torch
    from attn_harness import AttnProblem, relative_error, row_strided

    from jackfield_plugins.attention.triton import TritonAttnBackend

    prefix, new, heads, kv_heads, head_dim, page, dtype, layer_kw = CASES[name]
    fp8 = {"kv_dtype": torch.float8_e4m3fn, "kv_scales": FP8_KV[name]} if name in FP8_KV else {}
    p = AttnProblem(prefix, new, heads, kv_heads, head_dim, page, getattr(torch, dtype), "cpu", seed=len(name), **fp8)
    backend, layer, errors = TritonAttnBackend(p.runtime()), p.layer(**layer_kw), {}

    fb, q, k, v = p.extend_batch(backend)
    backend.init_forward_metadata(fb)
    out = backend.forward(q, k, v, layer, fb)
    errors["extend"] = relative_error(out, p.reference(q, fb, layer))
    out = backend.forward(row_strided(q), k, v, layer, fb)  # as the model passes it: a view of qkv
    errors["extend_strided_q"] = relative_error(out, p.reference(q, fb, layer))

    for label, cpu_lens in (("decode", True), ("decode_no_cpu_lens", False)):
        fb, q, k, v = p.decode_batch(backend, with_cpu_lens=cpu_lens)
        backend.init_forward_metadata(fb)
        out = backend.forward(q, k, v, layer, fb)
        errors[label] = relative_error(out, p.reference(q, fb, layer))
    errors["decode_strided_q"] = relative_error(backend.forward(row_strided(q), k, v, layer, fb),
                                                p.reference(q, fb, layer))
    semaphores, backend.semaphores = backend.semaphores, backend.semaphores[:0]  # too few: the merge kernel
    errors["decode_merge_kernel"] = relative_error(backend.forward(q, k, v, layer, fb), p.reference(q, fb, layer))
    backend.semaphores = semaphores

    # binary trees (branching) and chains (depth: deeper than the sliding window's 9)
    trees = [[-1] + [(j - 1) // 2 if i % 2 == 0 else j - 1 for j in range(1, n)] for i, n in enumerate(new)]
    fb, q, k, v = p.verify_batch(backend, trees)
    backend.init_forward_metadata(fb)
    errors["verify_tree"] = relative_error(backend.forward(q, k, v, layer, fb), p.tree_reference(q, fb, layer, trees))

    backend.init_cuda_graph_state(max_bs=len(prefix) + 2, max_num_tokens=len(prefix) + 2)
    fb, q, k, v = p.decode_batch(backend, seq_lens=[max(1, (a + b) // 2) for a, b in zip(prefix, new)])
    backend.init_forward_metadata_replay(fb)
    out = backend.forward(q, k, v, layer, fb)
    errors["decode_graph_metadata"] = relative_error(out, p.reference(q, fb, layer))
    fb, q, k, v = p.verify_batch(backend, trees)  # splits for the longest context, static scratch
    backend.init_forward_metadata_replay(fb)
    errors["verify_graph_metadata"] = relative_error(backend.forward(q, k, v, layer, fb),
                                                     p.tree_reference(q, fb, layer, trees))
    errors["semaphores_left_set"] = float(backend.semaphores.abs().sum())  # each launch leaves them at zero
    return errors


def _child_main() -> None:
    sys.path.insert(0, str(HARNESS_DIR))
    results = {}
    for name in CASES:
        try:
            results[name] = {"errors": run_case(name)}
        except Exception as exc:  # reported per case by the parent
            results[name] = {"failure": f"{type(exc).__name__}: {exc}"}
    print("RESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def interpreted_results() -> dict:
    from interpreter import run_interpreted

    return run_interpreted(__file__)


@pytest.mark.parametrize("name", list(CASES))
def test_triton_kernels_match_reference_in_interpreter(interpreted_results, name):
    result = interpreted_results[name]
    assert "failure" not in result, result.get("failure")
    tol = TOLERANCE[CASES[name][6]]
    bad = {path: err for path, err in result["errors"].items() if not err < tol}
    assert not bad, f"relative error above {tol}: {bad}"


if __name__ == "__main__":
    _child_main()
