"""The public functions: isolated_run and the per-kind helpers."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ._binary import run_binary
from ._options import Command, Limit, RunOptions, plain, seconds, size_mb, split_command
from ._result import IsolatedResult
from ._service import run_service

Path = Union[str, "os.PathLike[str]"]


def isolated_run(
    cmd: Command,
    cwd: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout_seconds: Optional[Limit] = None,
    memory_limit_mb: Optional[Limit] = None,
    cpu_quota: Optional[Limit] = None,
    pids_limit: Optional[Limit] = None,
    profile: Optional[str] = None,
    *,
    cpu_time_seconds: Optional[Limit] = None,
    grace_seconds: Optional[Limit] = None,
    output_limit_mb: Optional[Limit] = None,
    swap_limit_mb: Optional[Limit] = None,
    require_isolation: bool = False,
    network: Optional[str] = None,
    syscalls: Optional[str] = None,
    pid_ns: Optional[str] = None,
    fs: Optional[str] = None,
    rw: Sequence[Union[str, Path]] = (),
    hide: Sequence[Union[str, Path]] = (),
    user: Optional[str] = None,
    isolation: Optional[str] = None,
    limits_from: Union[None, Path, Mapping[str, Any]] = None,
    clear_env: bool = False,
    backend: Optional[str] = None,
    capture_output: bool = True,
    server: Optional[str] = None,
    run_id: Optional[str] = None,
    input: Union[None, str, bytes] = None,
    text: bool = True,
    check: bool = False,
    timeline: Union[None, bool, float, str] = None,
) -> IsolatedResult:
    """Runs ``cmd`` in its own cgroup under corral and says what happened.

    Limits start from ``profile`` (``default``, ``notebook``, ``post_process``,
    ``tool`` or one from a profiles file; ``default`` when not given), then
    ``limits_from`` (analysis metadata: a JSON/TOML file or a mapping, with the old
    keys ``memory_limit_mb``/``timeout_seconds``/``cpu_quota``/``pids_limit`` and/or
    a ``limits`` table), then the arguments here. Each limit is a number in the
    parameter's unit (MiB, seconds, CPUs, processes) or corral's text (``"2G"``,
    ``"90s"``, and ``"max"``/``"none"`` for no limit); ``None`` keeps the profile's.

    The sandbox layers work the same way: ``network`` is ``"none"`` (the run's own
    network namespace with loopback only, every built-in profile's default) or
    ``"host"``; ``syscalls`` is ``"default"`` (corral's seccomp deny-list) or ``"off"``;
    ``pid_ns`` is ``"on"`` (the run sees only its own processes) or ``"off"``; ``fs`` is
    ``"read-only"`` (the host read-only; writable are ``cwd``, each ``rw`` path and a
    private ``/tmp``) or ``"host"``; ``hide`` paths appear empty; ``user`` is who the
    run is when corral runs as root (``"dynamic"``, the default there, or
    ``"NAME[:GROUP]"``). ``isolation="off"`` is the run without a sandbox in one word
    (the host's network, file system and processes, corral's own identity, no filter,
    no setsid/no_new_privs, core dumps as inherited), and an explicit layer beside it
    wins over it.
    What was applied is ``result.isolation`` (the record's ``isolation`` object).

    ``env`` is added to the inherited environment (with ``clear_env=True`` it is the
    whole environment). ``cwd`` defaults to this process' working directory. Standard
    input is ``/dev/null``. With ``capture_output`` the command's output is captured
    in temporary files and returned as text (undecodable bytes replaced); without it,
    the command writes to this process' stdout/stderr.

    The run goes through the ``corral`` binary (the package's own, else ``$CORRAL_BIN``
    or ``corral`` on ``$PATH``), or, with ``server`` (or ``$CORRAL_SERVER``), through the corral
    service at that address (``unix:/path.sock``, ``/path.sock``, ``host:port``); there
    ``env`` adds to the *service's* environment and ``backend`` cannot be chosen.

    As with :func:`subprocess.run`: ``input`` (``str`` or ``bytes``) is the command's
    standard input, ``text=False`` returns ``stdout``/``stderr`` as ``bytes``,
    ``result.args`` is the command, and ``check=True`` (or
    ``result.check_returncode()``) raises :class:`~corral.CorralCalledProcessError`, a
    :class:`subprocess.CalledProcessError` carrying the record, unless it exited 0.
    ``input`` needs the binary: the service has no standard input for a run.

    ``timeline=True`` (or an interval: seconds, or corral's text such as ``"500ms"``)
    keeps a timeline of the run in its record, a reading of memory, CPU, processes, I/O
    and pressure every second (or that interval) and the limit events with their time:
    ``result.timeline`` (plain lists) and ``result.timeline_frame()`` (a pandas
    DataFrame). The service keeps one for every run.

    Every run that corral attempted is a result, even when the command could not be
    started (``reason == "spawn_failed"``, returncode 127/126, or 125 for a missing
    ``cwd``). Bad input is the caller's bug and raises instead:

    Raises:
        CorralError: corral refused the input (``cpu_quota=0``, an unknown profile,
            ``env`` keys with ``=``, ...) or could not create the cgroup; the message
            is corral's own.
        CorralRefused: ``require_isolation=True`` and some requested limit cannot be
            enforced on this host.
        CorralNotFound: no corral binary.
        ValueError: an empty command, or ``backend`` together with ``server``.
    """
    limits: Dict[str, str] = {}
    for name, value, fmt in (
        ("memory", memory_limit_mb, size_mb),
        ("swap", swap_limit_mb, size_mb),
        ("cpus", cpu_quota, plain),
        ("pids", pids_limit, plain),
        ("timeout", timeout_seconds, seconds),
        ("cpu_time", cpu_time_seconds, seconds),
        ("grace", grace_seconds, seconds),
        ("output_limit", output_limit_mb, size_mb),
        ("network", network, str),
        ("syscalls", syscalls, str),
        ("pid_ns", pid_ns, str),
        ("fs", fs, str),
        ("user", user, str),
        ("isolation", isolation, str),
    ):
        if value is not None:
            limits[name] = fmt(value)
    meta: Union[None, str, Mapping[str, Any]] = None
    if limits_from is not None:
        meta = limits_from if isinstance(limits_from, Mapping) else os.path.abspath(limits_from)
    opts = RunOptions(
        command=split_command(cmd),
        cwd=os.path.abspath(cwd) if cwd is not None else None,
        env={str(k): str(v) for k, v in (env or {}).items()},
        clear_env=clear_env,
        profile=profile,
        limits=limits,
        require_isolation=require_isolation,
        rw=[os.fspath(p) for p in _paths(rw)],
        hide=[os.fspath(p) for p in _paths(hide)],
        limits_from=meta,
        backend=backend,
        run_id=run_id,
        timeline=_timeline_interval(timeline),
    )
    server = server if server is not None else os.environ.get("CORRAL_SERVER") or None
    data = input.encode() if isinstance(input, str) else input
    if server:
        if data is not None:
            raise ValueError("input= needs the corral binary: the service gives runs no stdin")
        result = run_service(opts, server, capture_output)
        if not text:
            result.stdout = _encoded(result.stdout)
            result.stderr = _encoded(result.stderr)
    else:
        # (Only what was asked: run_binary(opts, capture_output) is the common call.)
        extra: Dict[str, Any] = {}
        if data is not None:
            extra["input"] = data
        if not text:
            extra["text"] = False
        result = run_binary(opts, capture_output, **extra)
    if check:
        result.check_returncode()
    return result


def _timeline_interval(v: Union[None, bool, float, str]) -> Optional[str]:
    """``--timeline``'s interval: ``True`` is corral's default (1 s)."""
    if v is None or v is False:
        return None
    if v is True:
        return "1s"
    return seconds(v)


def _encoded(v: Union[str, bytes, None]) -> Optional[bytes]:
    return v.encode() if isinstance(v, str) else v


def _paths(v: Union[str, Path, Sequence[Union[str, Path]]]) -> List[Union[str, Path]]:
    """One path or a sequence of paths (a lone string is one path, not characters)."""
    return [v] if isinstance(v, (str, os.PathLike)) else list(v)


def nbconvert_command() -> List[str]:
    """How notebooks are executed: ``$CORRAL_NBCONVERT`` (split like a shell would),
    else this interpreter's ``python -m nbconvert`` when nbconvert is importable here
    (so the kernel is this environment's ``python3`` kernel), else ``jupyter-nbconvert``
    or ``jupyter nbconvert`` from ``$PATH``."""
    override = os.environ.get("CORRAL_NBCONVERT")
    if override:
        return split_command(override)
    if importlib.util.find_spec("nbconvert") is not None:
        return [sys.executable, "-m", "nbconvert"]
    for name, rest in (("jupyter-nbconvert", []), ("jupyter", ["nbconvert"])):
        found = shutil.which(name)
        if found:
            return [found, *rest]
    raise FileNotFoundError(
        "nbconvert is needed to run notebooks: pip install nbconvert ipykernel "
        "(or set CORRAL_NBCONVERT to the command to use)"
    )


def run_notebook_isolated(
    path: Path,
    *,
    output_path: Optional[Path] = None,
    timeout_seconds: Optional[Limit] = None,
    memory_limit_mb: Optional[Limit] = None,
    cwd: Optional[Path] = None,
    kernel_name: Optional[str] = None,
    allow_errors: bool = False,
    verbose: bool = False,
    **kw: Any,
) -> IsolatedResult:
    """Executes a notebook headless (``nbconvert --to notebook --execute``) under the
    ``notebook`` profile (2 GiB, 1 CPU, 512 processes, 10 minutes) and writes the
    executed notebook to ``output_path`` (default ``<name>.executed.ipynb`` beside
    it), which the result carries as ``output_path``. nbconvert starts the kernel in
    the notebook's directory; ``cwd`` (default: that directory) is where nbconvert
    itself runs. A cell that raises fails the run (exit 1) unless ``allow_errors``.
    Other keywords go to :func:`isolated_run`.

    The notebook is executed cell by cell (``python -m corral._nbrun``, with nbclient,
    nbconvert's executor, when it is importable here; ``$CORRAL_NBCONVERT`` or
    nbconvert from ``$PATH`` otherwise). ``output_path`` is written before and after
    each cell, so a run that does not finish (a raising cell, its wall clock, its
    memory budget, a signal, even SIGKILL) leaves the notebook as far as it got, the
    cell where it stopped marked with an error output (``CorralStoppedHere``, or its
    traceback) and ``metadata.corral``. Standard error gets one plain message without
    ANSI colour codes; the kernel's own output (warnings, logs) and coloured
    tracebacks only with ``verbose=True``."""
    src = os.path.abspath(path)
    if output_path is None:
        stem = os.path.basename(src)
        stem = stem[: -len(".ipynb")] if stem.endswith(".ipynb") else stem
        out = os.path.join(os.path.dirname(src), stem + ".executed.ipynb")
    else:
        out = os.path.abspath(output_path)
    if not os.environ.get("CORRAL_NBCONVERT") and importlib.util.find_spec("nbclient"):
        cmd = [sys.executable, "-m", "corral._nbrun", src, out]
        if kernel_name is not None:
            cmd += ["--kernel", kernel_name]
        if allow_errors:
            cmd.append("--allow-errors")
        if verbose:
            cmd.append("--verbose")
    else:
        cmd = nbconvert_command() + ["--to", "notebook", "--execute", src]
        cmd += ["--output-dir", os.path.dirname(out), "--output", os.path.basename(out)]
        if kernel_name is not None:
            cmd.append(f"--ExecutePreprocessor.kernel_name={kernel_name}")
        if allow_errors:
            cmd.append("--allow-errors")
    kw.setdefault("profile", "notebook")
    # The kernel runs in the notebook's directory and nbconvert writes the output's:
    # both stay writable in the read-only view, wherever ``cwd`` is.
    run_cwd = os.path.abspath(cwd) if cwd is not None else os.path.dirname(src)
    # (A working directory of / stays read-only in the view.)
    outside = {
        d
        for d in (os.path.dirname(src), os.path.dirname(out))
        if run_cwd == "/" or os.path.commonpath([d, run_cwd]) != run_cwd
    }
    if outside:
        kw["rw"] = [*kw.get("rw", ()), *sorted(outside)]
    result = isolated_run(
        cmd,
        cwd=run_cwd,
        timeout_seconds=timeout_seconds,
        memory_limit_mb=memory_limit_mb,
        **kw,
    )
    result.output_path = out
    return result


def run_post_process_isolated(cmd: Command, **kw: Any) -> IsolatedResult:
    """:func:`isolated_run` under the ``post_process`` profile (1 GiB, 1 CPU, 128
    processes, 5 minutes of wall clock and of CPU, 256 MiB of output)."""
    kw.setdefault("profile", "post_process")
    return isolated_run(cmd, **kw)


def run_tool_isolated(cmd: Command, **kw: Any) -> IsolatedResult:
    """:func:`isolated_run` under the ``tool`` profile (512 MiB, 0.5 CPU, 64
    processes, 2 minutes, 64 MiB of output)."""
    kw.setdefault("profile", "tool")
    return isolated_run(cmd, **kw)
