"""Run analyses under corral: each in its own cgroup with memory, CPU and process
limits and a wall clock, with a ``corral.result/v1`` record of what happened.

    >>> import corral
    >>> r = corral.isolated_run(["python3", "analysis.py"], memory_limit_mb=2048)
    >>> r.ok, r.reason, r.completion_notes, r.usage["wall_s"]
"""

from ._api import (
    isolated_run,
    nbconvert_command,
    run_notebook_isolated,
    run_post_process_isolated,
    run_tool_isolated,
)
from ._binary import find_binary, profiles
from ._errors import CorralCalledProcessError, CorralError, CorralNotFound, CorralRefused
from ._result import LIMIT_REASONS, REASONS, TIMELINE_COLUMNS, IsolatedResult, timeline_lists
from ._service import ServiceClient

__version__ = "0.1.0"

__all__ = [
    "CorralCalledProcessError",
    "CorralError",
    "CorralNotFound",
    "CorralRefused",
    "IsolatedResult",
    "LIMIT_REASONS",
    "REASONS",
    "TIMELINE_COLUMNS",
    "ServiceClient",
    "find_binary",
    "isolated_run",
    "nbconvert_command",
    "profiles",
    "run_notebook_isolated",
    "run_post_process_isolated",
    "run_tool_isolated",
    "timeline_lists",
]
