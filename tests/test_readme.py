"""The README's quick start runs as printed, and its two commands are the ones CI runs."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_quick_start_runs(tmp_path: pathlib.Path) -> None:
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", README, re.S)
    assert code is not None
    script = tmp_path / "quick_start.py"
    script.write_text(code.group(1))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1048576", "12"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(commands) >= 2
    assert "mmipc demo" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]
    assert "pytest -n auto" in commands[1]
