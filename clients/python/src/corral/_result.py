"""The result of one run, built from corral's ``corral.result/v1`` record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from ._errors import CorralCalledProcessError

#: The reasons a run can end with, as written in ``record["outcome"]["reason"]``.
REASONS = (
    "exited",
    "signaled",
    "oom",
    "timeout",
    "cpu_time",
    "cancelled",
    "spawn_failed",
    "lost",
    "file_size",
    "disk",
)

#: The columns of a timeline point, in the record's ``timeline.points``.
TIMELINE_COLUMNS = (
    "t",
    "memory_bytes",
    "cpu_s",
    "processes",
    "io_read_bytes",
    "io_write_bytes",
    "memory_pressure",
    "cpu_pressure",
    "io_pressure",
)


def timeline_lists(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The record's ``timeline`` as plain lists, one per column of
    :data:`TIMELINE_COLUMNS` (``None`` where a point lacks the value, e.g. pressure on
    cgroup v1), plus ``interval_s`` and ``events`` (``[{"t", "kind", "detail"}]``);
    ``None`` when the record has no timeline."""
    tl = record.get("timeline")
    if not isinstance(tl, dict):
        return None
    points = list(tl.get("points") or [])
    out: Dict[str, Any] = {"interval_s": tl.get("interval_s")}
    for col in TIMELINE_COLUMNS:
        out[col] = [p.get(col) for p in points]
    out["events"] = [dict(e) for e in tl.get("events") or []]
    return out


#: The reasons that mean "corral stopped it because it went over a budget".
LIMIT_REASONS = frozenset({"oom", "timeout", "cpu_time", "file_size", "disk"})


@dataclass
class IsolatedResult:
    """What happened to one run.

    ``returncode`` is corral's exit status: the command's own status when it exited;
    128+N when it died of signal N (an OOM kill is 137); 124 when corral stopped it at
    its wall-clock or CPU-time limit; 125/126/127 when it could not be started. On the
    rlimit backend a refused allocation that the command reported (``MemoryError``) is
    ``reason == "oom"`` with the command's own status (nothing was killed).
    """

    returncode: int
    #: Captured standard output (``None`` with ``capture_output=False``; ``bytes``
    #: with ``text=False``).
    stdout: Any
    #: Captured standard error (``None`` with ``capture_output=False``; ``bytes``
    #: with ``text=False``).
    stderr: Any
    #: Why the run ended: one of :data:`REASONS`.
    reason: str
    #: ``record["usage"]``: wall_s, cpu_user_s, cpu_system_s, memory_peak_bytes, ...
    usage: Dict[str, Any]
    #: ``record["notes"]``: what happened, in one or two sentences for a person.
    completion_notes: str
    #: The whole ``corral.result/v1`` record.
    record: Dict[str, Any]
    #: The backend that ran it (``cgroup2``, ``systemd``, ``cgroup1`` or ``rlimit``).
    backend: str
    #: ``record["limits"]["enforced"]``: the limits the host really enforced.
    limits_enforced: Dict[str, Any]
    #: ``record["limits"]["not_enforced"]``: ``[{"limit": ..., "why": ...}]``.
    not_enforced: List[Dict[str, str]] = field(default_factory=list)
    #: ``record["isolation"]``: the sandbox layers ``requested`` and ``enforced``, and
    #: ``not_enforced`` (``[{"layer": ..., "why": ...}]``); empty for a run that never ran.
    isolation: Dict[str, Any] = field(default_factory=dict)
    #: For notebook runs: where the executed notebook was written.
    output_path: Optional[str] = None
    #: The command as run (``record["command"]``), as ``CompletedProcess.args``.
    args: List[str] = field(default_factory=list)
    #: The run's timeline as plain lists (see :func:`timeline_lists`): ``t``,
    #: ``memory_bytes``, ``cpu_s``, ... and ``events``; ``None`` without one (a
    #: ``corral run`` without ``timeline=``).
    timeline: Optional[Dict[str, Any]] = None

    def timeline_frame(self) -> Any:
        """The timeline's points as a :class:`pandas.DataFrame` (one row per point,
        one column per :data:`TIMELINE_COLUMNS`); the events stay in
        ``timeline["events"]``.

        Raises:
            ImportError: pandas is not installed.
            ValueError: the run has no timeline.
        """
        try:
            import pandas  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError as e:
            raise ImportError(
                "timeline_frame() needs pandas (pip install pandas); "
                "result.timeline has the same data as plain lists"
            ) from e
        if self.timeline is None:
            raise ValueError("this run has no timeline (isolated_run(..., timeline=True))")
        return pandas.DataFrame({c: self.timeline[c] for c in TIMELINE_COLUMNS})

    def check_returncode(self) -> None:
        """Raises :class:`~corral.CorralCalledProcessError` (a
        :class:`subprocess.CalledProcessError` carrying the record) unless the run
        exited 0, as ``subprocess.CompletedProcess.check_returncode`` does."""
        if self.returncode != 0:
            raise CorralCalledProcessError(
                self.returncode, self.args, self.stdout, self.stderr, record=self.record
            )

    @property
    def ok(self) -> bool:
        """True when the command exited by itself with status 0."""
        return self.reason == "exited" and self.returncode == 0

    @property
    def killed_by_limit(self) -> bool:
        """True when corral ended the run at a budget: memory, wall clock or CPU time."""
        return self.reason in LIMIT_REASONS

    @property
    def run_id(self) -> str:
        """The run's id (``record["id"]``)."""
        return str(self.record.get("id", ""))

    @classmethod
    def from_record(
        cls,
        record: Dict[str, Any],
        stdout: Optional[Union[str, bytes]] = None,
        stderr: Optional[Union[str, bytes]] = None,
        returncode: Optional[int] = None,
    ) -> "IsolatedResult":
        """Builds a result from a parsed ``corral.result/v1`` record."""
        outcome = record.get("outcome") or {}
        limits = record.get("limits") or {}
        code = outcome.get("exit_code") if returncode is None else returncode
        return cls(
            returncode=int(code if code is not None else 125),
            stdout=stdout,
            stderr=stderr,
            reason=str(outcome.get("reason", "lost")),
            usage=dict(record.get("usage") or {}),
            completion_notes=str(record.get("notes", "")),
            record=record,
            backend=str(record.get("backend", "")),
            limits_enforced=dict(limits.get("enforced") or {}),
            not_enforced=list(limits.get("not_enforced") or []),
            isolation=dict(record.get("isolation") or {}),
            args=[str(a) for a in record.get("command") or []],
            timeline=timeline_lists(record),
        )
