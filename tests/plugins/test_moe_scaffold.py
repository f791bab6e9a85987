"""`jackfield plugin new --kind moe`: the generated dispatcher passes the conformance kit, through the
generated package's own kit test."""
from __future__ import annotations

import os
import subprocess
import sys

from jackfield.cli import main


def test_generated_moe_dispatcher_passes_its_kit_test(tmp_path):
    pkg = tmp_path / "jackfield-my-moe"
    assert main(["plugin", "new", "--kind", "moe", "--name", "my_moe", "--dir", str(pkg)]) == 0
    source = (pkg / "jackfield_my_moe" / "dispatcher.py").read_text()
    assert "class MyMoeDispatcher(MoEDispatcher):" in source and 'name = "my_moe"' in source
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=pkg,
                          env={k: v for k, v in env.items() if not k.startswith("JACKFIELD_")},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "11 passed" in done.stdout and "1 skipped" in done.stdout, done.stdout[-2000:]
