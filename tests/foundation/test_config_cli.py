"""`jackfield config show` in a subprocess: precedence, sources and clean errors."""
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


def test_show_default_port(run_cli):
    done = run_cli("config", "show", "--json", JACKFIELD_PLUGINS="example")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["port"] == {"value": 30000, "source": "default"}


def test_show_text_lists_every_value(run_cli):
    done = run_cli("config", "show", "--port", "8123", JACKFIELD_PLUGINS="example")
    assert done.returncode == 0, done.stderr
    port_line = next(line for line in done.stdout.splitlines() if line.startswith("port "))
    assert port_line.split() == ["port", "8123", "cli:--port"]


def test_bad_file_exits_2_naming_the_value(run_cli, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('port = "abc"\n')
    done = run_cli("config", "show", "--config", str(config), JACKFIELD_PLUGINS="example")
    assert done.returncode == 2
    assert "'abc'" in done.stderr and "'port'" in done.stderr and "file:" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_env_exits_2(run_cli):
    done = run_cli("config", "show", JACKFIELD_PLUGINS="example", JACKFIELD_NOPE="1")
    assert done.returncode == 2
    assert "unknown setting 'nope' (from env:JACKFIELD_NOPE" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_flag_names_it(run_cli):
    done = run_cli("config", "show", "--nope", "1", JACKFIELD_PLUGINS="example")
    assert done.returncode == 2
    assert "--nope" in done.stderr
