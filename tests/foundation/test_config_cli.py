"""`jackfield config show`: precedence, sources and clean errors.

Precedence and the bad-file exit run as real subprocesses; the rest call `jackfield.cli.main`
in-process.
"""
from __future__ import annotations

import json


def test_show_reports_value_and_source(run_cli, tmp_path):
    config = tmp_path / "jackfield.toml"
    config.write_text('port = 8001\nhost = "0.0.0.0"\nseed = 7\n')
    done = run_cli("config", "show", "--json", "--config", str(config), "--port", "8003", "--seed", "9",
                   JACKFIELD_PORT="8002", JACKFIELD_HOST="10.0.0.1", JACKFIELD_PLUGINS="example")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["port"] == {"value": 8003, "source": "cli:--port"}
    assert shown["seed"] == {"value": 9, "source": "cli:--seed"}
    assert shown["host"] == {"value": "10.0.0.1", "source": "env:JACKFIELD_HOST"}
    assert shown["max_prefill_tokens"] == {"value": 16384, "source": "default"}


def test_bad_file_exits_2_naming_the_value(run_cli, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('port = "abc"\n')
    done = run_cli("config", "show", "--config", str(config), JACKFIELD_PLUGINS="example")
    assert done.returncode == 2
    assert "'abc'" in done.stderr and "'port'" in done.stderr and f"file:{config}" in done.stderr
    assert "Traceback" not in done.stderr


def test_show_default_port(cli):
    code, out, err = cli("config", "show", "--json")
    assert code == 0, err
    assert json.loads(out)["port"] == {"value": 30000, "source": "default"}


def test_yaml_file_and_env(cli, tmp_path):
    config = tmp_path / "jackfield.yaml"
    config.write_text("port: 8100\nattention_backend: example_sdpa\n")
    code, out, err = cli("config", "show", "--json", "--config", str(config), JACKFIELD_PORT="8200")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["port"] == {"value": 8200, "source": "env:JACKFIELD_PORT"}
    assert shown["attention_backend"] == {"value": "example_sdpa", "source": f"file:{config}"}


def test_show_text_lists_every_value(cli):
    code, out, err = cli("config", "show", "--port", "8123")
    assert code == 0, err
    port_line = next(line for line in out.splitlines() if line.startswith("port "))
    assert port_line.split() == ["port", "8123", "cli:--port"]
    assert len(out.splitlines()) == len(json.loads(cli("config", "show", "--json")[1]))


def test_bad_env_exits_2(cli):
    code, out, err = cli("config", "show", JACKFIELD_NOPE="1")
    assert code == 2
    assert "unknown setting 'nope' (from env:JACKFIELD_NOPE='1')" in err


def test_out_of_range_env_exits_2(cli):
    code, out, err = cli("config", "show", JACKFIELD_PORT="99999")
    assert code == 2
    assert "invalid value '99999' for setting 'port' (from env:JACKFIELD_PORT)" in err


def test_unknown_flag_names_it(cli):
    code, out, err = cli("config", "show", "--nope", "1")
    assert code == 2
    assert "--nope" in err


def test_output_to_a_closed_pipe_exits_quietly():
    """`jackfield config show --json | head -1`: the reader is gone before the output is written."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "jackfield.cli", "config", "show", "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
