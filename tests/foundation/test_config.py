"""Settings: defaults < file < env < CLI, each value's source, and errors that name key, value and source."""
from __future__ import annotations

import pytest

from jackfield.config import ConfigError, Settings, load_settings


@pytest.fixture
def toml_file(tmp_path):
    path = tmp_path / "jackfield.toml"
    path.write_text('port = 8001\nhost = "0.0.0.0"\nattention-backend = "example_sdpa"\n'
                    '[plugin_choice]\n"attention.example_sdpa" = "jackfield-example-plugin"\n')
    return path


def test_defaults():
    loaded = load_settings(env={})
    assert loaded.settings.port == 30000
    assert loaded.settings.attention_backend == "auto"
    assert set(loaded.sources.values()) == {"default"}


def test_precedence_file_then_env_then_cli(toml_file):
    file_only = load_settings(str(toml_file), env={})
    assert file_only.settings.port == 8001
    assert file_only.sources["port"] == f"file:{toml_file}"
    assert file_only.settings.attention_backend == "example_sdpa"
    assert file_only.settings.plugin_choice == {"attention.example_sdpa": "jackfield-example-plugin"}

    env = {"JACKFIELD_PORT": "8002"}
    with_env = load_settings(str(toml_file), env=env)
    assert with_env.settings.port == 8002
    assert with_env.sources["port"] == "env:JACKFIELD_PORT"
    assert with_env.sources["host"] == f"file:{toml_file}"

    with_cli = load_settings(str(toml_file), cli={"port": "8003"}, env=env)
    assert with_cli.settings.port == 8003
    assert with_cli.sources["port"] == "cli:--port"
    assert with_cli.settings.host == "0.0.0.0"
    assert with_cli.sources["seed"] == "default"


def test_yaml_file(tmp_path):
    path = tmp_path / "jackfield.yaml"
    path.write_text("port: 8100\ndisable_radix_cache: true\nplugin_choice:\n  attention.example_sdpa: dup\n")
    loaded = load_settings(str(path), env={})
    assert loaded.settings.port == 8100
    assert loaded.settings.disable_radix_cache is True
    assert loaded.settings.plugin_choice == {"attention.example_sdpa": "dup"}
    assert loaded.sources["disable_radix_cache"] == f"file:{path}"


def test_env_values_are_parsed():
    loaded = load_settings(env={"JACKFIELD_DISABLE_CUDA_GRAPH": "true", "JACKFIELD_PLUGIN_CHOICE": '{"attention.x": "d"}',
                                "JACKFIELD_PLUGINS": "example", "HOME": "/root"})
    assert loaded.settings.disable_cuda_graph is True
    assert loaded.settings.plugin_choice == {"attention.x": "d"}


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("nope = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'nope' \(from file:.*bad.toml\)"):
        load_settings(str(path), env={})


def test_unknown_key_in_env():
    with pytest.raises(ConfigError, match=r"unknown setting 'nope' \(from env:JACKFIELD_NOPE"):
        load_settings(env={"JACKFIELD_NOPE": "1"})


def test_kernel_and_benchmark_switches_in_env_are_not_settings():
    """The kernel switches read by jackfield.kernels and the benchmarks' variables share the prefix
    but are not settings."""
    loaded = load_settings(env={"JACKFIELD_DISABLE_PDL": "1", "JACKFIELD_DISABLE_FUSED_KERNELS": "1",
                                "JACKFIELD_GIT_COMMIT": "abc1234", "JACKFIELD_CUTLASS_LIB": "/x.so"})
    assert not {"disable_pdl", "disable_fused_kernels", "git_commit", "cutlass_lib"} & set(loaded.sources)


def test_unknown_key_on_cli():
    with pytest.raises(ConfigError, match=r"unknown setting 'nope' \(from cli\)"):
        load_settings(cli={"nope": 1}, env={})


def test_invalid_value_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('port = "abc"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(str(path), env={})
    assert "'abc'" in str(err.value) and "'port'" in str(err.value) and f"file:{path}" in str(err.value)


def test_invalid_value_in_env():
    with pytest.raises(ConfigError) as err:
        load_settings(env={"JACKFIELD_PORT": "99999"})
    message = str(err.value)
    assert "'99999'" in message and "'port'" in message and "env:JACKFIELD_PORT" in message


def test_invalid_value_on_cli():
    with pytest.raises(ConfigError, match=r"'fast'.*'schedule_policy'.*cli:--schedule-policy"):
        load_settings(cli={"schedule_policy": "fast"}, env={})


@pytest.mark.parametrize("raw", ["", "{not json"])
def test_invalid_json_in_env_names_the_key(raw):
    with pytest.raises(ConfigError, match=r"'plugin_choice' \(from env:JACKFIELD_PLUGIN_CHOICE\)"):
        load_settings(env={"JACKFIELD_PLUGIN_CHOICE": raw})


def test_bracketed_env_value_of_a_string_field_stays_a_string():
    assert load_settings(env={"JACKFIELD_API_KEY": "[abc"}).settings.api_key == "[abc"


def test_unparseable_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("port = \n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_settings(str(path), env={})


def test_settings_are_frozen():
    settings = load_settings(env={}).settings
    with pytest.raises(Exception):
        settings.port = 1
    assert isinstance(settings, Settings)
