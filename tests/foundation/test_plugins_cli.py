"""`jackfield plugins` and plugin CLI commands against the installed fixture plugins.

The full listing and the plugin's own command run as real subprocesses; the variations run
`jackfield.cli.main` in-process (same code path, without paying for a Python start each time).
"""
from __future__ import annotations

import json

import pytest

ROW_KEYS = {"kind", "name", "plugin", "distribution", "version", "available", "reason", "priority"}


@pytest.fixture(scope="module")
def listing(run_cli):
    """`jackfield plugins --json` in a subprocess, every plugin enabled but dup (tested on its own)."""
    done = run_cli("plugins", "--json", JACKFIELD_DISABLE_PLUGINS="dup")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_lists_the_example_component(listing):
    rows = [r for r in listing if r["name"] == "example_sdpa"]
    assert len(rows) == 1
    row = rows[0]
    assert ROW_KEYS <= set(row)
    assert row["kind"] == "attention"
    assert row["plugin"] == "example"
    assert row["distribution"] == "jackfield-example-plugin"
    assert row["version"] == "0.1.0"
    assert row["available"] is True
    assert row["priority"] == -100


def test_broken_plugin_is_listed_with_its_error(listing):
    rows = [r for r in listing if r["plugin"] == "broken"]
    assert len(rows) == 1
    assert rows[0]["kind"] == "plugin"
    assert rows[0]["available"] is False
    assert rows[0]["distribution"] == "jackfield-broken-plugin"
    assert "broken on purpose" in rows[0]["reason"]


def test_plugin_adds_a_cli_command(run_cli):
    done = run_cli("example-hello", JACKFIELD_PLUGINS="example")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello from example plugin"


def test_allow_list_hides_other_plugins(cli):
    code, out, err = cli("plugins", "--json", JACKFIELD_PLUGINS="example")
    assert code == 0, err
    rows = json.loads(out)
    components = [r for r in rows if r["kind"] != "plugin"]
    assert components and {r["plugin"] for r in components} == {"example"}
    others = [r for r in rows if r["kind"] == "plugin"]
    assert others and all(r["reason"] == "disabled: not in JACKFIELD_PLUGINS" for r in others)
    assert "broken on purpose" not in out + err


def test_block_list_hides_the_plugin(cli):
    code, out, err = cli("plugins", "--json", JACKFIELD_DISABLE_PLUGINS="example,dup")
    assert code == 0, err
    rows = json.loads(out)
    assert not [r for r in rows if r["name"] == "example_sdpa"]
    example = [r for r in rows if r["plugin"] == "example"]
    assert len(example) == 1 and example[0]["reason"] == "disabled: listed in JACKFIELD_DISABLE_PLUGINS"


def test_conflict_is_reported_by_the_listing(cli):
    code, out, err = cli("plugins", "--json", JACKFIELD_PLUGINS="example,dup")
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["name"] == "example_sdpa"]
    assert {r["distribution"] for r in rows} == {"jackfield-example-plugin", "jackfield-dup-plugin"}
    assert all("name conflict" in r["reason"] for r in rows)
    assert "plugin_choice" in err


def test_table_output_has_a_header_row(cli):
    code, out, err = cli("plugins", JACKFIELD_PLUGINS="example")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "VERSION", "AVAILABLE", "PRIORITY", "REASON"]
    assert any(line.split()[:3] == ["attention", "example_sdpa", "example"] for line in lines[1:])


def test_disabled_plugin_adds_no_command(cli):
    code, out, err = cli("example-hello", JACKFIELD_DISABLE_PLUGINS="example")
    assert code == 2
    assert "invalid choice: 'example-hello'" in err
