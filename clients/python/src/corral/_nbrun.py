"""Executes a notebook headless, cell by cell, for :func:`corral.run_notebook_isolated`.

    python -m corral._nbrun SRC OUT [--kernel NAME] [--allow-errors] [--verbose]

It runs inside the sandbox, in place of ``jupyter nbconvert --execute``, with nbclient
(nbconvert's own executor). The difference is what is left at ``OUT`` when the run
does not finish: before each cell starts, the notebook so far is written there with
that cell marked as the one running (an error output ``CorralStoppedHere`` and
``metadata.corral.stopped_here``), and after each cell the notebook is written again
without the mark. So whatever ends the run (its wall clock, its memory budget, a
signal, even SIGKILL) the executed notebook shows how far it got and where it
stopped. A cell that raises is marked the same way (``metadata.corral.failed``) beside
its traceback.

Standard error gets one plain message (no ANSI colour codes) when the notebook fails;
the kernel's own output (debugger warnings, logs) and coloured tracebacks only with
``--verbose``.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import signal
import subprocess
import sys
from typing import Any, Dict, List, Optional

#: Terminal colour and cursor codes, as IPython puts them into tracebacks.
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

#: The error output that marks the cell that was running when the run ended.
STOPPED_HERE = "CorralStoppedHere"


def plain(text: str) -> str:
    """``text`` without ANSI escape codes."""
    return ANSI.sub("", text)


def _marked(nb: Any, index: int, ename: str, evalue: str, key: str) -> Any:
    """A copy of ``nb`` whose cell ``index`` carries an error output and metadata."""
    import nbformat

    out = copy.deepcopy(nb)
    cell = out.cells[index]
    cell.setdefault("outputs", []).append(
        nbformat.v4.new_output(  # type: ignore[no-untyped-call]
            "error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"]
        )
    )
    cell.metadata["corral"] = {key: True, "why": evalue}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m corral._nbrun")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--kernel", default=None)
    p.add_argument("--allow-errors", action="store_true")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(a.src, as_version=4)  # type: ignore[no-untyped-call]
    # The cell running now, and the last one started (an error is raised after it
    # counts as executed).
    state: Dict[str, Any] = {"cell": None, "last": None}

    def write(doc: Any) -> None:
        tmp = a.out + ".corral-partial"
        nbformat.write(doc, tmp)  # type: ignore[no-untyped-call]
        os.replace(tmp, a.out)

    def on_cell_start(cell: Any, cell_index: int) -> None:
        state["cell"] = state["last"] = cell_index
        write(
            _marked(
                nb,
                cell_index,
                STOPPED_HERE,
                "this cell was running when the run ended (its record says why: "
                "timeout, memory, a signal)",
                "stopped_here",
            )
        )

    def on_cell_executed(cell: Any, cell_index: int, execute_reply: Any) -> None:
        state["cell"] = None
        write(nb)

    def on_signal(signum: int, frame: Any) -> None:
        # corral ends the whole tree (SIGTERM, SIGKILL after the grace period): the
        # notebook on disk already marks the running cell; say where and go.
        idx = state["cell"]
        where = f" in cell {idx}" if idx is not None else ""
        print(
            f"corral: notebook stopped by {signal.Signals(signum).name}{where}; "
            f"executed so far: {a.out}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    client = NotebookClient(
        nb,
        kernel_name=a.kernel or "",
        allow_errors=a.allow_errors,
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(a.src))}},
        on_cell_start=on_cell_start,
        on_cell_executed=on_cell_executed,
    )
    if not a.kernel:
        # nbclient then takes the notebook's own kernelspec, as nbconvert does.
        client.kernel_name = nb.metadata.get("kernelspec", {}).get("name", "python3")
    quiet: Dict[str, Any] = {}
    if not a.verbose:
        # The kernel's own stdout/stderr (debugger warnings, logs), not the cells'.
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        client.execute(**quiet)
    except CellExecutionError as e:
        idx = state["last"]
        if idx is not None:
            nb.cells[idx].metadata["corral"] = {"failed": True}
        write(nb)
        msg = str(e) if a.verbose else plain(str(e))
        print(f"corral: a cell raised an error; executed so far: {a.out}\n{msg}", file=sys.stderr)
        return 1
    except Exception as e:  # the kernel died (its memory, a signal), could not start...
        idx = state["cell"]
        why = plain(f"{type(e).__name__}: {e}").rstrip(": ")
        where = ""
        if idx is not None:
            where = f" in cell {idx}"
            write(
                _marked(
                    nb,
                    idx,
                    STOPPED_HERE,
                    f"this cell was running when the kernel stopped ({why}); the run's "
                    "record says why (memory, a signal, its wall clock)",
                    "stopped_here",
                )
            )
        print(
            f"corral: the notebook stopped{where}: {why}; executed so far: {a.out}",
            file=sys.stderr,
        )
        return 1
    write(nb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
