"""One run's inputs, normalised once and rendered as ``corral run`` flags or as the
service's JSON body. corral itself validates every value; this module only formats."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

#: A limit given as a number (in the parameter's unit) or as corral's own text
#: (``"2G"``, ``"90s"``, ``"max"``, ``"none"``).
Limit = Union[int, float, str]
#: A command: a list of arguments, or a string split with :func:`shlex.split`.
Command = Union[str, Sequence[str]]


def _number(v: Union[int, float]) -> str:
    if isinstance(v, bool):
        raise TypeError(f"a limit must be a number or a string, not {v!r}")
    if isinstance(v, int):
        return str(v)
    text = format(v, "f").rstrip("0").rstrip(".")
    return text or "0"


def size_mb(v: Limit) -> str:
    """Megabytes (MiB) as corral's size text: 64 -> ``64M``; strings pass through."""
    return v if isinstance(v, str) else _number(v) + "M"


def seconds(v: Limit) -> str:
    """Seconds as corral's duration text: 30 -> ``30s``, 2.5 -> ``2.5``."""
    if isinstance(v, str):
        return v
    return _number(v) + ("s" if isinstance(v, int) else "")


def plain(v: Limit) -> str:
    """CPUs or a process count as text."""
    return v if isinstance(v, str) else _number(v)


def split_command(cmd: Command) -> List[str]:
    """A list of arguments from a list or a shell-like string."""
    argv = shlex.split(cmd) if isinstance(cmd, str) else [os.fspath(a) for a in cmd]
    if not argv:
        raise ValueError("empty command")
    return argv


#: The limits and sandbox layers, each passed as ``--NAME`` (``_`` as ``-``).
LIMIT_FLAGS = (
    "memory",
    "swap",
    "cpus",
    "pids",
    "timeout",
    "cpu_time",
    "grace",
    "output_limit",
    "network",
    "syscalls",
    "pid_ns",
    "fs",
    "user",
    "isolation",
)

#: The sandbox layers that ``isolation`` sets, so an explicit switch resets them.
ISOLATION_LAYERS = ("network", "syscalls", "pid_ns", "fs", "user")

#: The path lists, each passed as a repeated ``--NAME PATH``; they add up across the
#: profile, the metadata and the arguments.
PATH_LISTS = ("rw", "hide")


@dataclass
class RunOptions:
    """Everything :func:`corral.isolated_run` was asked, normalised."""

    command: List[str]
    cwd: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    clear_env: bool = False
    profile: Optional[str] = None
    #: corral's limit names (``memory``, ``cpus``, ``pids``, ``timeout``, ``cpu_time``,
    #: ``grace``, ``output_limit``, ``swap``) to their text values.
    limits: Dict[str, str] = field(default_factory=dict)
    require_isolation: bool = False
    #: Paths the run may write besides its working directory (``--rw``).
    rw: List[str] = field(default_factory=list)
    #: Paths the run sees as empty (``--hide``).
    hide: List[str] = field(default_factory=list)
    limits_from: Union[None, str, Mapping[str, Any]] = None
    backend: Optional[str] = None
    run_id: Optional[str] = None
    #: ``--timeline INTERVAL``: keep a timeline in the record (the service always does).
    timeline: Optional[str] = None

    def cli_flags(self) -> List[str]:
        """The ``corral run`` flags, without ``--json``/``--stdout``/``--stderr``."""
        out: List[str] = []
        if self.profile is not None:
            out += ["--profile", self.profile]
        for name in LIMIT_FLAGS:
            if name in self.limits:
                out += ["--" + name.replace("_", "-"), self.limits[name]]
        for name in PATH_LISTS:
            for path in getattr(self, name):
                out += ["--" + name, path]
        if self.cwd is not None:
            out += ["--cwd", self.cwd]
        for k, v in self.env.items():
            out += ["--env", f"{k}={v}"]
        if self.clear_env:
            out.append("--clear-env")
        if self.require_isolation:
            out.append("--require-isolation")
        if self.backend is not None:
            out += ["--backend", self.backend]
        if self.run_id is not None:
            out += ["--id", self.run_id]
        if self.timeline is not None:
            out += ["--timeline", self.timeline]
        return out

    def service_body(self) -> Dict[str, Any]:
        """The ``POST /runs`` body of the corral service."""
        profile = self.profile
        limits: Dict[str, Any] = {}
        if self.limits_from is not None:
            meta = load_metadata(self.limits_from)
            profile = profile if profile is not None else meta.get("profile")
            limits.update(metadata_limits(meta))
        if "isolation" in self.limits:
            # As `corral run`: the switch resets the metadata's layers; the arguments'
            # own layers still win over it.
            for layer in ISOLATION_LAYERS:
                limits.pop(layer, None)
        for k, v in self.limits.items():
            limits[k] = _json_number(v) if k in ("cpus", "pids") else v
        for name in PATH_LISTS:
            paths = list(limits.get(name) or []) + [p for p in getattr(self, name)]
            if paths:
                limits[name] = list(dict.fromkeys(paths))
        if self.require_isolation:
            limits["require_isolation"] = True
        return {
            "command": self.command,
            # Like `corral submit`: the caller's directory, not the service's.
            "cwd": os.path.abspath(self.cwd) if self.cwd is not None else os.getcwd(),
            "env": dict(self.env),
            "clear_env": self.clear_env,
            "profile": profile,
            "limits": limits,
            "id": self.run_id,
            "idempotency_key": None,
            "priority": 0,
        }


def _json_number(v: str) -> Union[int, float, str]:
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def load_metadata(src: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Analysis metadata (what ``--limits-from`` reads) from a mapping or a JSON/TOML file."""
    if not isinstance(src, str):
        return dict(src)
    with open(src, "rb") as f:
        data = f.read()
    if src.endswith(".toml"):
        try:
            import tomllib  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:  # Python < 3.11
            raise ValueError(f"{src}: reading TOML needs Python 3.11+; use JSON") from e
        meta = tomllib.loads(data.decode())
    else:
        meta = json.loads(data)
    if not isinstance(meta, dict):
        raise ValueError(f"{src}: analysis metadata must be an object")
    return meta


def metadata_limits(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The service's ``limits`` table from analysis metadata: the old runtime's keys
    (``memory_limit_mb``, ``timeout_seconds``, ``cpu_quota``, ``pids_limit``), then a
    ``limits`` table on top, as ``corral run --limits-from`` merges them."""
    out: Dict[str, Any] = {}
    if "memory_limit_mb" in meta:
        out["memory"] = size_mb(meta["memory_limit_mb"])
    if "timeout_seconds" in meta:
        out["timeout"] = seconds(meta["timeout_seconds"])
    if "cpu_quota" in meta:
        out["cpus"] = meta["cpu_quota"]
    if "pids_limit" in meta:
        out["pids"] = meta["pids_limit"]
    table = meta.get("limits")
    if isinstance(table, Mapping):
        out.update(table)
    return out
