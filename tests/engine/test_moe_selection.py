"""Selection for MoE and MLA models: the KV layout decides which attention backends can serve a
model, expert layers require an MoE dispatcher, and a bad choice is a startup error that names the
model's need and the components that meet it."""
from __future__ import annotations

import json

import pytest

from jackfield.config import settings_for
from jackfield.runtime_setup import setup_runtime
from jackfield.selection import SelectionError
from model_harness import SPECS, build_runner, save_tiny_model
from moe_harness import MOE, save_tiny_moe


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    out = {}
    for name in ("deepseek_v2", "qwen3_moe"):
        out[name] = tmp_path_factory.mktemp(name)
        save_tiny_moe(MOE[name], out[name])
    out["llama"] = tmp_path_factory.mktemp("llama")
    save_tiny_model(SPECS["llama"], out["llama"])
    return out


def setup(directory, **settings):
    return setup_runtime(settings_for(model=str(directory), device="cpu", dtype="float32", **settings))


def test_auto_gives_an_mla_model_a_latent_backend_and_says_why(dirs):
    choices = setup(dirs["deepseek_v2"]).choices
    assert choices["attention"].name == "torch_native_mla"
    assert "torch_native: reads the 'per_head' KV layout, the model stores 'latent'" in choices["attention"].reason
    assert choices["moe"].name == "torch_native"
    assert setup(dirs["llama"]).choices["attention"].name == "cpu"


def test_mla_model_with_a_per_head_backend_is_a_startup_error(dirs):
    with pytest.raises(SelectionError) as err:
        setup(dirs["deepseek_v2"], attention_backend="torch_native")
    msg = str(err.value)
    assert "'torch_native' cannot serve this model" in msg and "the model stores 'latent'" in msg
    assert "attention components that can: torch_native_mla" in msg


def test_per_head_model_with_a_latent_backend_is_a_startup_error(dirs):
    with pytest.raises(SelectionError, match="reads the 'latent' KV layout, the model stores 'per_head'"):
        setup(dirs["llama"], attention_backend="torch_native_mla")


def test_moe_model_without_a_dispatcher_is_a_startup_error(dirs):
    with pytest.raises(SelectionError) as err:
        setup(dirs["qwen3_moe"], moe_backend="none")
    assert "has expert layers (silu experts) and needs an MoE dispatcher" in str(err.value)
    assert "dispatchers that can run it: torch_native" in str(err.value)
    with pytest.raises(SelectionError, match="no moe component named 'nonesuch'"):
        setup(dirs["qwen3_moe"], moe_backend="nonesuch")


def test_moe_dispatcher_that_cannot_run_the_model_names_the_ones_that_can(dirs, tmp_path):
    """A dispatcher whose activation does not match the model's experts (a config with gelu)."""
    cfg = json.loads((dirs["qwen3_moe"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    with pytest.raises(SelectionError) as err:
        setup(tmp_path, moe_backend="torch_native")
    msg = str(err.value)
    assert msg.startswith("model ['Qwen3MoeForCausalLM'] has expert layers (gelu experts): moe component "
                          "'torch_native' cannot serve this model: lacks required feature(s): gelu"), msg
    assert "no registered moe component can" in msg


def test_kv_capacity_follows_the_latent_layout(dirs):
    runner = build_runner(dirs["deepseek_v2"], page_size=4)
    cfg = runner.config
    per_token = cfg.num_layers * (cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim) * 4  # one latent, float32
    assert runner.kv_layout.bytes_per_token(cfg.num_layers, runner.dtype) == per_token
    assert runner.max_total_tokens == (1 << 20) // per_token // 4 * 4
    assert runner.kv_pool.k_buffer(0).shape[1:] == (1, cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim)
    v = runner.kv_pool.v_buffer(0)
    assert v.shape[-1] == cfg.mla.kv_lora_rank and v.data_ptr() == runner.kv_pool.k_buffer(0).data_ptr()
