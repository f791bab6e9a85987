"""MoE dispatchers on CPU: the torch_native reference passes the kit (jackfield.testing suites/moe.py:
float32 reference over expert counts 8–128, top-k 1–8, grouped and biased routing, experts with no
tokens, an empty batch); the SDK's reference routing against a hand-computed case."""
from __future__ import annotations

import torch

from jackfield.sdk import RoutingConfig, route
from jackfield.testing import certify
from jackfield_plugins.moe.torch_native import TorchNativeMoE


def test_torch_native_passes_the_kit():
    report = certify(TorchNativeMoE, "cpu")
    assert report.ok, report.format()
    assert report.count("passed") >= 10


def test_reference_routing_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    weights, ids = route(logits, RoutingConfig(top_k=2))
    p = logits.softmax(-1)[0]
    assert sorted(ids[0].tolist()) == [2, 3]
    assert torch.allclose(weights[0].sort().values, torch.stack([p[2], p[3]]) / (p[2] + p[3]))
    # groups {0,1} and {2,3}; V3 style: sigmoid, the bias moves the choice to group 0, weights stay unbiased
    bias = torch.tensor([5.0, 5.0, 0.0, 0.0])
    v3 = RoutingConfig(top_k=1, scoring="sigmoid", num_groups=2, topk_groups=1, group_scoring="top2_sum",
                       correction_bias=True, renormalize=False, scaling_factor=2.0)
    weights, ids = route(logits, v3, bias)
    assert ids.tolist() == [[1]] and torch.allclose(weights, 2.0 * torch.sigmoid(torch.tensor([[1.0]])))


def test_tuned_configs_are_read_per_shape_and_nearest_batch(tmp_path, monkeypatch):
    import json

    import pytest

    pytest.importorskip("triton")
    from jackfield_plugins.moe.triton_kernels import configs

    name = configs.config_file_name(8, 64, 32, "cpu")
    (tmp_path / name).write_text(json.dumps({"1": {"path": "gemv", "BLOCK_N": 8}, "64": {"path": "gemm", "BLOCK_M": 16}}))
    monkeypatch.setenv("JACKFIELD_MOE_CONFIG_DIR", str(tmp_path))
    configs.load_table.cache_clear()
    try:
        pick = lambda tokens: configs.pick_config(tokens, 8, 64, 32, 2, torch.device("cpu"))  # noqa: E731
        assert pick(1) == {"path": "gemv", "BLOCK_N": 8}
        assert pick(20) == {"path": "gemv", "BLOCK_N": 8} and pick(50)["path"] == "gemm"
        assert configs.pick_config(4, 16, 64, 32, 2, torch.device("cpu")) == configs.default_config(4, 16, 2)
    finally:
        configs.load_table.cache_clear()


def test_shipped_tuned_tables_cover_the_tuned_batches_with_complete_configs():
    import json

    import pytest

    pytest.importorskip("triton")
    from jackfield_plugins.moe.triton_kernels import configs

    files = sorted(configs.CONFIG_DIR.glob("E=*.json"))
    assert files, "plugins/moe/configs/ ships no tuned table"
    needs = {"gemv": {"BLOCK_N", "BLOCK_K", "BLOCK_N2", "BLOCK_K2", "num_warps", "num_stages"},
             "gemm": {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"}}
    for path in files:
        table = json.loads(path.read_text())
        assert {1, 2, 4, 8, 16, 32, 64, 128, 256} <= {int(k) for k in table}, path.name
        for batch, cfg in table.items():
            assert needs[cfg["path"]] <= set(cfg), (path.name, batch, cfg)
