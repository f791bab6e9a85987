"""`jackfield serve --dp-size 2` on two GPUs (1B-shaped dummy model, bf16): each replica loads onto
its own device, and a prefix family's second request hits the cache of the replica that served
its first. Skipped with fewer than two visible GPUs."""
import os
import sys
from pathlib import Path

import httpx
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from server_harness import start_server  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]
CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "configs", "llama-1b.json")
FAMILIES = [[128000] + list(range(1000 + 100 * f, 1064 + 100 * f)) for f in range(2)]  # 65-token prefixes


def test_dp2_loads_a_replica_per_gpu_and_routes_by_prefix(tmp_path):
    free_before = [torch.cuda.mem_get_info(i)[0] for i in range(2)]
    srv = start_server(tmp_path, "--model", CONFIG, "--load-format", "dummy", "--dp-size", "2",
                       "--max-total-tokens", "32768", "--max-running-requests", "8",
                       env={"CUDA_VISIBLE_DEVICES": "0,1"})
    try:
        used = [free_before[i] - torch.cuda.mem_get_info(i)[0] for i in range(2)]
        assert all(u > 2e9 for u in used), f"device memory taken per GPU: {used}"  # 1B bf16 weights: 2.5 GB
        out = srv.output()
        assert "replica 0: devices 0," in out and "replica 1: devices 1," in out, out

        def cached(ids):
            body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
            resp = httpx.post(srv.url + "/generate", json=body, timeout=120)
            assert resp.status_code == 200, resp.text
            return resp.json()["meta_info"]["cached_tokens"]

        assert [cached(f + [7]) for f in FAMILIES] == [0, 0]
        assert [cached(f + [8, 9]) for f in FAMILIES] == [65, 65]
        text = httpx.get(srv.url + "/metrics", timeout=30).text
        for replica in (0, 1):
            assert f'jackfield_dp_routed_requests_total{{reason="cache_hit",replica="{replica}"}} 1.0' in text
        assert srv.stop() == 0
    finally:
        srv.kill()
