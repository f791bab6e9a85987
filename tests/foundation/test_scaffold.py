"""`jackfield plugin new`: every kind with a template gives a package that installs, is discovered,
passes the conformance kit (from the CLI and from its own generated test) and serves a generation
when selected; bad input writes nothing.

The packages are generated once per module and pip-installed (non-editable, offline) into a
directory of their own, like tests/fixtures/install.sh does for the fixture plugins.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jackfield.cli import main
from jackfield.scaffold import template_kinds

KINDS = {"attention": "my_attention", "quant": "my_quant", "model": "my_model", "grammar": "my_grammar"}


def new(*args: str) -> int:
    try:
        return main(["plugin", "new", *args])
    except SystemExit as exc:  # argparse errors
        return exc.code


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory) -> tuple[Path, Path]:
    """(directory holding the generated packages, directory they are pip-installed into)."""
    src, site = tmp_path_factory.mktemp("generated"), tmp_path_factory.mktemp("generated-site")
    build = tmp_path_factory.mktemp("generated-build")  # a copy: the in-tree build writes build/, *.egg-info
    for kind, name in KINDS.items():
        assert new("--kind", kind, "--name", name, "--dir", str(src / name)) == 0
        shutil.copytree(src / name, build / name)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                           "--no-build-isolation", "--disable-pip-version-check", "--target", str(site),
                           *(str(build / n) for n in KINDS.values())], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return src, site


def test_every_template_kind_is_offered():
    assert {"attention", "quantization", "model", "grammar"} <= set(template_kinds())


def test_generated_package_layout(scaffolded):
    src, _ = scaffolded
    root = src / "my_attention"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "jackfield_my_attention/__init__.py", "jackfield_my_attention/backend.py",
                     "pyproject.toml", "tests/test_kit.py"]
    assert '[project.entry-points.jackfield]\nmy_attention = "jackfield_my_attention"' in (root / "pyproject.toml").read_text()
    init = (root / "jackfield_my_attention/__init__.py").read_text()
    assert 'JACKFIELD_API = ">=1.0,<2"' in init and "register(MyAttentionBackend)" in init
    assert 'attention_backend = "my_attention"' in (root / "README.md").read_text()
    assert "class MyModelForCausalLM(DecoderCausalLM)" in (src / "my_model/jackfield_my_model/model.py").read_text()
    assert "max_relative_error = 0.02" in (src / "my_quant/jackfield_my_quant/method.py").read_text()


def test_installed_plugins_are_listed_and_certified(scaffolded, monkeypatch, capsys):
    _, site = scaffolded
    monkeypatch.syspath_prepend(str(site))
    for var in [v for v in os.environ if v.startswith("JACKFIELD_")]:
        monkeypatch.delenv(var)
    capsys.readouterr()
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {(rows[n]["kind"], rows[n]["available"]) for n in KINDS.values()} == {
        ("attention", True), ("quantization", True), ("model", True), ("grammar", True)}
    for name in KINDS.values():
        assert main(["plugin", "check", name, "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"jackfield-{name.replace('_', '-')} 0.1.0 (plugin '{name}')")
        assert "FAIL" not in out and out.rstrip().endswith(": certified"), out


def test_the_generated_kit_test_passes(scaffolded, run_python):
    src, site = scaffolded
    done = run_python("import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))", "-q", "-p", "no:cacheprovider",
                      str(src / "my_quant" / "tests"), paths=(site,), cwd=src / "my_quant")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]  # every kit check ran and passed: none skipped
    assert re.fullmatch(r"\d+ passed in [\d.]+s", summary), done.stdout


TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-6}


def greedy(model_dir: Path, **settings) -> tuple[list[list[int]], dict]:
    from jackfield import Engine

    with Engine(model=str(model_dir), load_format="dummy", kv_cache_bytes=1 << 24, warmup=False, **settings) as engine:
        outs = engine.generate([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7]], {"temperature": 0, "max_new_tokens": 8})
        return [o["token_ids"] for o in outs], engine.info.components


def test_generated_plugins_serve_a_generation(scaffolded, tmp_path, monkeypatch):
    _, site = scaffolded
    monkeypatch.syspath_prepend(str(site))
    for var in [v for v in os.environ if v.startswith("JACKFIELD_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("JACKFIELD_PLUGINS", "my_attention,my_quant,my_model,torch_native,unquantized,llama")
    llama, mine = tmp_path / "llama", tmp_path / "mine"
    for directory, arch in ((llama, "LlamaForCausalLM"), (mine, "MyModelForCausalLM")):
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps({**TINY_LLAMA, "architectures": [arch]}))
    reference, _ = greedy(llama, attention_backend="torch_native")
    tokens, components = greedy(llama, attention_backend="my_attention")
    assert components["attention"]["name"] == "my_attention" and tokens == reference
    tokens, components = greedy(mine, attention_backend="torch_native")  # same dummy weights, same decoder
    assert components["model"]["name"] == "my_model" and tokens == reference
    tokens, components = greedy(llama, attention_backend="torch_native", quantization="my_quant")
    assert components["quantization"]["name"] == "my_quant" and [len(t) for t in tokens] == [8, 8]


def byte_level_model(directory: Path) -> None:
    """A dummy tiny Llama whose tokenizer has one token per byte (ids 0-255) and an EOS (256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)} | {"<eos>": 256}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<eos>"])
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    (directory / "config.json").write_text(json.dumps({**TINY_LLAMA, "vocab_size": 264, "eos_token_id": 256}))


def test_generated_grammar_constrains_a_generation(scaffolded, tmp_path, monkeypatch):
    """The scaffolded grammar backend, chosen per request, constrains a dummy model's output,
    jump-forward included; a JSON schema sent to it is refused naming it."""
    import re

    from jackfield import Engine

    _, site = scaffolded
    monkeypatch.syspath_prepend(str(site))
    for var in [v for v in os.environ if v.startswith("JACKFIELD_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("JACKFIELD_PLUGINS", "my_grammar,torch_native,unquantized,llama")
    byte_level_model(tmp_path / "bytes")
    regex = r"(yes|no), the answer is [0-9]{2}"
    with Engine(model=str(tmp_path / "bytes"), load_format="dummy", kv_cache_bytes=1 << 24, warmup=False) as engine:
        outs = engine.generate(["Q:", "Is it?"], {"regex": regex, "grammar_backend": "my_grammar", "temperature": 0.8,
                                                  "seed": 1, "max_new_tokens": 40})
        assert all(o["finish_reason"] == "stop" and re.fullmatch(regex, o["text"]) for o in outs), outs
        assert engine.loop.scheduler.stats.jump_forward_tokens >= 2 * len(", the answer is ")
        with pytest.raises(ValueError, match="grammar backend 'my_grammar' does not support json_schema"):
            engine.generate("x", {"json_schema": {"type": "object"}, "grammar_backend": "my_grammar"})


def test_unknown_kind_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert new("--kind", "sampler", "--name", "x") == 2
    assert "unknown kind 'sampler'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_cli_kind_has_a_template():
    from jackfield.cli.plugin_cmd import CLI_KINDS, kind_arg

    assert sorted(kind_arg(k) for k in CLI_KINDS) == template_kinds()


def test_kind_without_a_template_writes_nothing(tmp_path, monkeypatch, capsys):
    """A kind whose template is missing from an installation (here: hidden) is refused, naming the others."""
    import jackfield.scaffold as scaffold

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(scaffold, "template_kinds", lambda: ["attention", "model"])
    assert new("--kind", "lora", "--name", "x") == 2
    err = capsys.readouterr().err
    assert "no template for kind 'lora' yet (templates exist for: attention, model)" in err
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_is_left_alone(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert new("--kind", "attention", "--name", "x", "--dir", str(tmp_path)) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_name_writes_nothing(tmp_path, capsys):
    assert new("--kind", "attention", "--name", "My-Plugin", "--dir", str(tmp_path / "p")) == 2
    assert "invalid plugin name 'My-Plugin'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_wheel_ships_the_templates(tmp_path):
    """Templates are package data: a built wheel (what `pip install jackfield` gets) holds them."""
    import zipfile

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", str(repo), "-w", str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("jackfield-*.whl"))).namelist()
    for kind in template_kinds():
        assert f"jackfield/scaffold/templates/{kind}/template.toml" in names
    assert "jackfield/scaffold/templates/_common/__package__/__init__.py.jinja" in names
