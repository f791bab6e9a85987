"""`jackfield plugins doctor`: every unavailable component or plugin with why and how to fix it;
exit 0 exactly when what the configuration selects can run."""
from __future__ import annotations

import json

import pytest

from jackfield.doctor import component_fix, install_hint
from jackfield.registry import ComponentInfo, Registry
from jackfield.sdk import AttentionBackend, Availability, Capabilities

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    return tmp_path


def test_doctor_explains_every_problem_and_passes_a_runnable_selection(cli, model_dir):
    code, out, err = cli("plugins", "doctor", "--model", str(model_dir), "--load-format", "dummy", "--device", "cpu")
    assert code == 0, out + err
    assert "x plugin 'broken' (jackfield-broken-plugin 0.1.0): failed to load: ImportError: broken on purpose" in out
    assert "fix: reinstall or update jackfield-broken-plugin, or switch it off with JACKFIELD_DISABLE_PLUGINS=broken" in out
    assert "x plugin 'future' (jackfield-future-plugin 2.0.0): supports jackfield plugin API >=2.0,<3" in out
    assert "pip install -U jackfield-future-plugin" in out
    assert "x attention 'example_sdpa': registered by jackfield-dup-plugin, jackfield-example-plugin" in out
    assert 'plugin_choice = {"attention.example_sdpa"' in out
    assert "  attention          cpu" in out and out.rstrip().endswith("everything selected is available")


def test_doctor_fails_when_the_selection_cannot_run(cli, model_dir):
    code, out, err = cli("plugins", "doctor", "--model", str(model_dir), "--load-format", "dummy", "--device", "cpu",
                         "--attention-backend", "future_attention")
    assert code == 1
    assert "the configuration's selection cannot run: no attention component named 'future_attention'" in out
    assert "future (jackfield-future-plugin) incompatible" in out


def info_for(cls, distribution="jackfield") -> ComponentInfo:
    return ComponentInfo(cls.kind, cls.name, cls, cls.name, distribution, "0.1.0")


def test_a_missing_package_names_the_extra_that_installs_it():
    assert install_hint("flashinfer", "jackfield") == "pip install 'jackfield[gpu]'  (installs flashinfer-python)"
    assert install_hint("xgrammar", "jackfield") == "pip install 'jackfield[grammar]'  (installs xgrammar)"
    assert install_hint("nosuchpackage", "jackfield") == "pip install nosuchpackage"

    class NeedsPackage(AttentionBackend):
        name = "needs_package"
        requires_packages = ("nosuchpackage",)

    assert component_fix(Registry([]), info_for(NeedsPackage), "x", "") == "pip install nosuchpackage"


def test_the_component_s_own_fix_wins():
    class OwnFix(AttentionBackend):
        name = "own_fix"

        @classmethod
        def availability(cls):
            return Availability.no("licence file missing", fix="put the licence in ~/.own_fix")

    avail = OwnFix.availability()
    assert component_fix(Registry([]), info_for(OwnFix), avail.reason, avail.fix) == "put the licence in ~/.own_fix"


def test_gpu_only_components_get_the_hardware_they_need():
    import torch

    class GpuOnly(AttentionBackend):
        name = "gpu_only"
        capabilities = Capabilities(devices=("cuda",), min_compute_capability=(90, 0))

    fix = component_fix(Registry([]), info_for(GpuOnly), "x", "")
    if torch.cuda.is_available():
        assert "needs a GPU of compute capability 90.0 or newer" in fix
    else:
        assert fix.startswith("run on a machine with an NVIDIA GPU")
