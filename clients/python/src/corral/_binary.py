"""Running ``corral run`` as a subprocess and reading its record back."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Tuple, Union

from ._errors import CorralError, CorralNotFound, CorralRefused
from ._options import RunOptions
from ._result import IsolatedResult

#: corral's exit status for its own failures (bad input, no cgroup access, refusal).
EXIT_CORRAL_FAILED = 125


def bundled_binary() -> Optional[str]:
    """The ``corral`` binary this package's wheel installed (beside the interpreter's
    scripts, as listed in the installed distribution's RECORD), or ``None`` (a
    pure-Python copy of the package, or the file is gone)."""
    try:
        dist = importlib.metadata.distribution("corral-client")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == "corral":
            path = str(f.locate())
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return os.path.realpath(path)
    return None


def find_binary() -> str:
    """The corral binary: the one bundled in this package's wheel, else ``$CORRAL_BIN``
    if set, else ``corral`` on ``$PATH``."""
    bundled = bundled_binary()
    if bundled is not None:
        return bundled
    env = os.environ.get("CORRAL_BIN")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise CorralNotFound(f"CORRAL_BIN={env!r} is not an executable file")
        return env
    found = shutil.which("corral")
    if found is None:
        raise CorralNotFound(
            "the corral binary was not found: install the package from its wheel "
            "(`pip install ./clients/python` builds it), set CORRAL_BIN to its path or put "
            "`corral` on PATH (build it with `cargo build -p corral-cli`)"
        )
    return found


def corral_message(stderr: str) -> str:
    """corral's own error message from its standard error: the last ``corral: ...``
    line, else clap's ``error: ...`` line, else the whole text."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("corral: "):
            return ln[len("corral: ") :]
    for ln in lines:
        if ln.startswith("error: "):
            return ln[len("error: ") :]
    return "\n".join(lines) or "corral failed without a message"


def _error(message: str, **kw: Any) -> CorralError:
    cls = CorralRefused if message.startswith("refusing to run") else CorralError
    return cls(message, **kw)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _read(path: str, text: bool) -> Union[str, bytes]:
    if text:
        return _read_text(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def run_binary(
    opts: RunOptions,
    capture_output: bool = True,
    input: Optional[bytes] = None,
    text: bool = True,
) -> IsolatedResult:
    """Runs ``corral run`` with the options; see :func:`corral.isolated_run`. ``input``
    is the command's standard input (else ``/dev/null``)."""
    corral = find_binary()
    with tempfile.TemporaryDirectory(prefix="corral-py-") as tmp:
        record_path = os.path.join(tmp, "record.json")
        argv: List[str] = [corral, "run", "--quiet", "--json", record_path]
        argv += opts.cli_flags()
        if opts.limits_from is not None:
            meta = opts.limits_from
            if isinstance(meta, str):
                src = meta
            else:
                src = os.path.join(tmp, "limits.json")
                with open(src, "w") as f:
                    json.dump(dict(meta), f)
            argv += ["--limits-from", src]
        out_path = os.path.join(tmp, "stdout")
        err_path = os.path.join(tmp, "stderr")
        if capture_output:
            argv += ["--stdout", out_path, "--stderr", err_path]
        argv += ["--", *opts.command]
        code, corral_stderr = _supervise(argv, capture_output, input)
        record: Optional[Dict[str, Any]] = None
        raw = _read_text(record_path)
        if raw.strip():
            try:
                record = json.loads(raw)
            except ValueError as e:
                raise CorralError(
                    f"corral exited {code} with an unreadable record: {e}",
                    returncode=code,
                    stderr=corral_stderr,
                    argv=argv,
                ) from e
        if record is not None and record.get("schema") == "corral.error/v1":
            # corral failed itself (exit 125) and said why in the record file. A
            # mapping's temporary file is named as what the caller gave.
            why = str(record.get("error", "corral failed"))
            if opts.limits_from is not None and not isinstance(opts.limits_from, str):
                why = why.replace(os.path.join(tmp, "limits.json"), "limits_from (the mapping)")
            raise _error(
                why,
                returncode=code,
                stderr=corral_stderr,
                argv=argv,
            )
        if record is None:
            if capture_output:
                message = corral_message(corral_stderr)
            else:
                message = "corral failed before running the command; its message is on stderr"
            if code < 0:
                message = f"corral died of signal {-code} without a result record: {message}"
                code = 128 - code
            elif code != EXIT_CORRAL_FAILED:
                message = f"corral exited {code} without a result record: {message}"
            raise _error(message, returncode=code, stderr=corral_stderr, argv=argv)
        stdout = _read(out_path, text) if capture_output else None
        stderr = _read(err_path, text) if capture_output else None
        return IsolatedResult.from_record(
            record, stdout, stderr, returncode=code if code >= 0 else None
        )


def _supervise(
    argv: List[str], capture_output: bool, input: Optional[bytes] = None
) -> Tuple[int, str]:
    """Runs corral to completion. If this process is interrupted (Ctrl-C, an exception
    from a signal handler), corral gets SIGTERM, which ends the run the clean way
    (its whole tree is killed and its cgroup removed), and we wait for it."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.DEVNULL if capture_output else None,
            stderr=subprocess.PIPE if capture_output else None,
        )
    except OSError as e:
        raise CorralNotFound(f"cannot start {argv[0]}: {e}") from e
    try:
        _, err = proc.communicate(input)
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    stderr = err.decode("utf-8", errors="replace") if err else ""
    return proc.returncode, stderr


def profiles() -> List[Dict[str, Any]]:
    """The effective profiles: the parsed output of ``corral profiles --json``."""
    argv = [find_binary(), "profiles", "--json"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CorralError(
            corral_message(proc.stderr), returncode=proc.returncode, stderr=proc.stderr, argv=argv
        )
    data = json.loads(proc.stdout)
    if not isinstance(data, list):
        raise CorralError("unexpected output of `corral profiles --json`", argv=argv)
    return data
