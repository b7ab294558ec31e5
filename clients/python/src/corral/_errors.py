"""The exceptions of the corral client."""

from __future__ import annotations

import subprocess
from typing import Any, Dict, Optional, Sequence


class CorralError(Exception):
    """corral could not run the command at all.

    Raised when ``corral run`` exits 125 without writing a result record (bad input
    such as ``cpu_quota=0`` or an unknown profile, no cgroup access, ...), when the
    binary cannot be started, or when the corral service answers with an error.
    A command that ran, or that could not be started (``spawn_failed``), is never an
    error: it is an :class:`~corral.IsolatedResult`.
    """

    def __init__(
        self,
        message: str,
        *,
        returncode: Optional[int] = None,
        stderr: str = "",
        argv: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__(message)
        #: corral's own message, without the ``corral:`` prefix.
        self.message = message
        #: corral's exit status (125), or the HTTP status for the service, if any.
        self.returncode = returncode
        #: Everything corral wrote to its standard error.
        self.stderr = stderr
        #: The corral command line that failed, if the binary was used.
        self.argv = list(argv) if argv is not None else None


class CorralNotFound(CorralError):
    """No corral binary: none bundled, neither ``$CORRAL_BIN`` nor ``corral`` on ``$PATH``."""


class CorralRefused(CorralError):
    """``require_isolation=True`` and the host cannot enforce some requested limit."""


class CorralCalledProcessError(subprocess.CalledProcessError):
    """A run that did not exit 0, raised by ``check=True`` or
    :meth:`~corral.IsolatedResult.check_returncode`: a
    :class:`subprocess.CalledProcessError` (``returncode``, ``cmd``, ``output``/
    ``stdout``, ``stderr``) that also carries the run's ``corral.result/v1``
    ``record`` and its ``reason``."""

    def __init__(
        self,
        returncode: int,
        cmd: Sequence[str],
        output: Any = None,
        stderr: Any = None,
        record: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(returncode, list(cmd), output, stderr)
        #: The whole ``corral.result/v1`` record of the run.
        self.record: Dict[str, Any] = dict(record or {})
        #: Why the run ended (``record["outcome"]["reason"]``).
        self.reason: str = str((self.record.get("outcome") or {}).get("reason", ""))

    def __str__(self) -> str:
        notes = self.record.get("notes")
        base = super().__str__()
        return f"{base} ({self.reason}: {notes})" if notes else base
