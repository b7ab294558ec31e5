"""Run by run-tests.sh in a fresh virtualenv where only the built wheel (with its
``notebook`` extra) is installed, with no ``CORRAL_BIN`` and no ``corral`` on ``PATH``:
the bundled binary runs a real analysis and a real notebook.

    python wheel_check.py SCRATCH_DIR
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import corral

# Untyped: imported as a module object, as test_notebook.py does through importorskip.
nbformat: Any = importlib.import_module("nbformat")


def main(scratch: Path) -> None:
    assert "CORRAL_BIN" not in os.environ, "the check must run without CORRAL_BIN"
    assert shutil.which("corral") is None, f"corral is on PATH: {shutil.which('corral')}"
    binary = corral.find_binary()
    prefix = os.path.realpath(sys.prefix)
    assert binary.startswith(prefix + os.sep), f"{binary} is not this environment's ({prefix})"
    # The bundled binary comes before $CORRAL_BIN.
    os.environ["CORRAL_BIN"] = "/nonexistent/corral"
    assert corral.find_binary() == binary
    del os.environ["CORRAL_BIN"]

    r = corral.isolated_run(
        [sys.executable, "-c", "import os; print('pid', os.getpid()); print(sum(range(10**6)))"],
        cwd=str(scratch),
        timeout_seconds=60,
        memory_limit_mb=256,
    )
    assert r.ok, (r.reason, r.completion_notes, r.stderr)
    assert str(sum(range(10**6))) in (r.stdout or ""), r.stdout
    assert r.record["limits"]["requested"]["memory_bytes"] == 256 << 20, r.record["limits"]

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import sys\nprint('kernel', sys.prefix)"),
        nbformat.v4.new_code_cell("open('answer.txt', 'w').write(str(6 * 7))"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = scratch / "check.ipynb"
    nbformat.write(nb, str(src))
    n = corral.run_notebook_isolated(src, timeout_seconds=300)
    assert n.ok, (n.reason, n.completion_notes, n.stderr)
    assert (scratch / "answer.txt").read_text() == "42"
    assert n.output_path is not None and "kernel" in Path(n.output_path).read_text()
    print(f"wheel check: {binary} ran an analysis ({r.record['backend']}) and a notebook")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
