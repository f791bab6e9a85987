"""Bad input at startup: a checkpoint-only method without its checkpoint, a checkpoint format no
installed method loads, a known format whose plugin is not installed, and a bad quantization_config."""
from __future__ import annotations

import json

import pytest

from jackfield.config import settings_for
from jackfield.plugins import load_plugins
from jackfield.runtime_setup import setup_runtime
from jackfield.selection import SelectionError

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 64,
          "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128}


def model_dir(tmp_path, quantization_config=None):
    cfg = dict(CONFIG, **({"quantization_config": quantization_config} if quantization_config else {}))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def setup(directory, env=None, **settings):
    pm, records = load_plugins(env=env or {})
    return setup_runtime(settings_for(model=str(directory), device="cpu", load_format="dummy", **settings), pm, records)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_checkpoint_only_method_without_its_checkpoint(tmp_path, method):
    with pytest.raises(SelectionError, match=rf"quantization component '{method}' cannot serve this model: loads only "
                                             rf"checkpoints quantized as '{method}' .*has no quantization_config"):
        setup(model_dir(tmp_path), quantization=method)


def test_unknown_checkpoint_format(tmp_path):
    with pytest.raises(SelectionError, match=r"no installed quantization method loads checkpoints quantized as "
                                             r"'bitsandbytes' .*installed methods load: awq, compressed-tensors, fp8"):
        setup(model_dir(tmp_path, {"quant_method": "bitsandbytes"}))


def test_known_format_whose_plugin_is_not_installed(tmp_path):
    with pytest.raises(SelectionError, match=r"quantized as 'awq' .*the quantization method 'awq' loads, but no "
                                             r"installed plugin registers it: it is provided by 'jackfield'"):
        setup(model_dir(tmp_path, {"quant_method": "awq"}), env={"JACKFIELD_DISABLE_PLUGINS": "awq"})


def test_wrong_method_for_the_checkpoint(tmp_path):
    with pytest.raises(SelectionError, match="cannot load checkpoints quantized as 'gptq'"):
        setup(model_dir(tmp_path, {"quant_method": "gptq"}), quantization="awq")


def test_auto_picks_the_checkpoint_format(tmp_path):
    setup_ = setup(model_dir(tmp_path, {"quant_method": "gptq", "bits": 4, "group_size": 32}))
    assert setup_.choices["quantization"].name == "gptq"


def test_bad_quantization_config_fails_at_load(tmp_path):
    from jackfield.model_runner import ModelRunner

    for qc, message in [({"quant_method": "awq", "bits": 3}, "awq checkpoints with 3 bits"),
                        ({"quant_method": "fp8", "weight_block_size": [100, 128]}, "two powers of two"),
                        ({"quant_method": "fp8", "activation_scheme": "sometimes"}, "activation_scheme")]:
        with pytest.raises(ValueError, match=message):
            ModelRunner(setup(model_dir(tmp_path, qc)), progress=False)


def test_kv_cache_dtype_setting_is_validated():
    from jackfield.config import ConfigError

    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        settings_for(kv_cache_dtype="fp8_e5m2")
