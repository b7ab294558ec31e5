"""Parts that need no cgroups: argument mapping, error parsing, binary lookup."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Dict

import pytest

import corral
import corral._api as corral_api
from corral._binary import corral_message
from corral._options import RunOptions, seconds, size_mb, split_command
from corral._result import IsolatedResult


def test_formatting() -> None:
    assert size_mb(64) == "64M" and size_mb(0.5) == "0.5M" and size_mb("2G") == "2G"
    assert seconds(30) == "30s" and seconds(2.5) == "2.5" and seconds("none") == "none"
    assert split_command("python3 -c 'print(1)'") == ["python3", "-c", "print(1)"]
    with pytest.raises(ValueError):
        split_command([])


def test_cli_flags() -> None:
    opts = RunOptions(
        command=["x"],
        cwd="/w",
        env={"A": "1"},
        clear_env=True,
        profile="tool",
        limits={"memory": "64M", "cpus": "0.5", "output_limit": "1M", "cpu_time": "3s"},
        require_isolation=True,
        backend="cgroup1",
        run_id="r1",
    )
    assert opts.cli_flags() == [
        "--profile", "tool", "--memory", "64M", "--cpus", "0.5", "--cpu-time", "3s",
        "--output-limit", "1M", "--cwd", "/w", "--env", "A=1", "--clear-env",
        "--require-isolation", "--backend", "cgroup1", "--id", "r1",
    ]  # fmt: skip


def test_sandbox_layers_are_flags_and_service_limits() -> None:
    opts = RunOptions(command=["x"], limits={"network": "host", "syscalls": "off"})
    assert opts.cli_flags() == ["--network", "host", "--syscalls", "off"]
    assert opts.service_body()["limits"] == {"network": "host", "syscalls": "off"}


def test_pid_ns_is_a_flag_and_a_service_limit() -> None:
    opts = RunOptions(command=["x"], limits={"pid_ns": "off", "isolation": "default"})
    assert opts.cli_flags() == ["--pid-ns", "off", "--isolation", "default"]
    opts.limits_from = {"limits": {"pid_ns": "off", "pids": 8}}
    assert opts.service_body()["limits"] == {"pids": 8, "pid_ns": "off", "isolation": "default"}


def test_isolation_off_is_a_flag_and_resets_the_metadata_layers() -> None:
    opts = RunOptions(command=["x"], limits={"isolation": "off", "syscalls": "default"})
    assert opts.cli_flags() == ["--syscalls", "default", "--isolation", "off"]
    opts.limits_from = {"limits": {"network": "none", "syscalls": "off", "pids": 8}}
    assert opts.service_body()["limits"] == {"pids": 8, "isolation": "off", "syscalls": "default"}


def test_file_system_view_flags_and_service_limits() -> None:
    opts = RunOptions(command=["x"], limits={"fs": "host"}, rw=["out", "/data"], hide=["/home"])
    assert opts.cli_flags() == ["--fs", "host", "--rw", "out", "--rw", "/data", "--hide", "/home"]
    opts.limits_from = {"limits": {"rw": ["/data", "/srv"], "fs": "read-only"}}
    assert opts.service_body()["limits"] == {"fs": "host", "rw": ["/data", "/srv", "out"], "hide": ["/home"]}
    opts.limits = {"isolation": "off"}
    assert "fs" not in opts.service_body()["limits"]


def test_notebook_keeps_its_directories_writable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: Dict[str, Any] = {}

    def fake(opts: RunOptions, capture_output: bool) -> Any:
        seen["flags"] = opts.cli_flags()
        return IsolatedResult.__new__(IsolatedResult)

    monkeypatch.delenv("CORRAL_SERVER", raising=False)
    monkeypatch.setenv("CORRAL_NBCONVERT", "nbconvert")
    monkeypatch.setattr(corral_api, "run_binary", fake)
    nb = tmp_path / "a" / "x.ipynb"
    corral.run_notebook_isolated(nb, output_path=tmp_path / "b" / "y.ipynb", cwd="/", rw=["/data"])
    flags = seen["flags"]
    rw = [flags[i + 1] for i, f in enumerate(flags) if f == "--rw"]
    assert rw == ["/data", str(tmp_path / "a"), str(tmp_path / "b")]
def test_layers_and_path_lists() -> None:
    opts = RunOptions(
        command=["x"],
        limits={"pid_ns": "off", "fs": "read-only", "user": "dynamic"},
        rw=["/data/out", "/data/cache"],
        hide=["/home"],
    )
    assert opts.cli_flags() == [
        "--pid-ns", "off", "--fs", "read-only", "--user", "dynamic",
        "--rw", "/data/out", "--rw", "/data/cache", "--hide", "/home",
    ]
    # The metadata's lists and the arguments' add up, without repeats.
    opts.limits_from = {"limits": {"rw": ["/data/out", "/scratch"], "hide": ["/root"]}}
    limits = opts.service_body()["limits"]
    assert limits["rw"] == ["/data/out", "/scratch", "/data/cache"]
    assert limits["hide"] == ["/root", "/home"]
    # The switch resets every layer the metadata set.
    opts = RunOptions(command=["x"], limits={"isolation": "off"})
    opts.limits_from = {"limits": {"pid_ns": "on", "fs": "read-only", "user": "nobody"}}
    assert opts.service_body()["limits"] == {"isolation": "off"}


def test_isolated_run_passes_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: Dict[str, Any] = {}

    def fake(opts: RunOptions, capture_output: bool) -> Any:
        seen["flags"] = opts.cli_flags()
        return None

    monkeypatch.delenv("CORRAL_SERVER", raising=False)
    monkeypatch.setattr(corral_api, "run_binary", fake)
    corral.isolated_run(["true"], isolation="off", network="none", cwd="/")
    assert seen["flags"] == ["--network", "none", "--isolation", "off", "--cwd", "/"]
    corral.isolated_run(["true"], fs="read-only", rw="/data", hide=["/home"], cwd="/")
    assert seen["flags"] == [
        "--fs", "read-only", "--rw", "/data", "--hide", "/home", "--cwd", "/",
    ]


def test_service_body_merges_metadata_under_arguments() -> None:
    opts = RunOptions(
        command=["x"],
        limits={"cpus": "0.5", "pids": "64", "timeout": "30s"},
        limits_from={"profile": "notebook", "memory_limit_mb": 100, "pids_limit": 8, "limits": {"grace": "1s"}},
        require_isolation=True,
    )
    body = opts.service_body()
    assert body["profile"] == "notebook"
    assert body["limits"] == {
        "memory": "100M", "pids": 64, "grace": "1s", "cpus": 0.5, "timeout": "30s",
        "require_isolation": True,
    }  # fmt: skip
    assert body["command"] == ["x"] and body["clear_env"] is False and body["priority"] == 0


def test_corral_message() -> None:
    assert corral_message("corral: invalid CPU quota\n") == "invalid CPU quota"
    clap = "error: unexpected argument '--x' found\n\nUsage: corral run\n"
    assert corral_message(clap) == "unexpected argument '--x' found"
    assert corral_message("") == "corral failed without a message"


def fake_corral(tmp_path: Path, script: str) -> str:
    path = tmp_path / "corral"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_refusal_is_corral_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = "refusing to run: isolation is required but the rlimit backend cannot enforce: pids (no cgroup)"
    monkeypatch.setenv("CORRAL_BIN", fake_corral(tmp_path, f"echo 'corral: {msg}' >&2\nexit 125\n"))
    with pytest.raises(corral.CorralRefused) as e:
        corral.isolated_run(["true"], require_isolation=True)
    assert e.value.message == msg and e.value.returncode == 125
    assert e.value.argv is not None and "--require-isolation" in e.value.argv


def test_crash_without_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_BIN", fake_corral(tmp_path, "echo boom >&2\nkill -9 $$\n"))
    with pytest.raises(corral.CorralError, match="corral died of signal 9 without a result record: boom"):
        corral.isolated_run(["true"])


def test_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_BIN", str(tmp_path / "missing"))
    with pytest.raises(corral.CorralNotFound, match="CORRAL_BIN"):
        corral.isolated_run(["true"])
    monkeypatch.delenv("CORRAL_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(corral.CorralNotFound, match="not found"):
        corral.profiles()
    assert issubclass(corral.CorralNotFound, corral.CorralError)


def test_nbconvert_command_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_NBCONVERT", "/opt/jupyter/bin/jupyter nbconvert")
    assert corral.nbconvert_command() == ["/opt/jupyter/bin/jupyter", "nbconvert"]


def test_result_properties() -> None:
    rec = {
        "id": "x",
        "backend": "cgroup1",
        "outcome": {"reason": "timeout", "exit_code": 124},
        "usage": {"wall_s": 1.0},
        "limits": {"enforced": {"pids": 1}, "not_enforced": [{"limit": "cpus", "why": "w"}]},
        "notes": "Stopped.",
    }
    r = corral.IsolatedResult.from_record(rec, "o", "e")
    assert (r.returncode, r.reason, r.ok, r.killed_by_limit, r.run_id) == (124, "timeout", False, True, "x")
    assert r.not_enforced == [{"limit": "cpus", "why": "w"}] and r.completion_notes == "Stopped."


def test_user_is_a_flag_and_a_service_key() -> None:
    opts = RunOptions(command=["x"], limits={"user": "nobody:nogroup"})
    assert opts.cli_flags() == ["--user", "nobody:nogroup"]
    assert opts.service_body()["limits"] == {"user": "nobody:nogroup"}
    # --isolation resets the metadata's user, like its other layers.
    opts = RunOptions(command=["x"], limits={"isolation": "off"})
    opts.limits_from = {"limits": {"user": "root", "pids": 8}}
    assert opts.service_body()["limits"] == {"pids": 8, "isolation": "off"}


def _timeline_record() -> Dict[str, Any]:
    return {
        "id": "t",
        "outcome": {"reason": "oom", "exit_code": 137},
        "timeline": {
            "interval_s": 1.0,
            "points": [
                {"t": 1.0, "memory_bytes": 10, "cpu_s": 0.5, "processes": 1},
                {"t": 2.0, "memory_bytes": 20, "cpu_s": 1.0, "processes": 2, "memory_pressure": 3.5},
            ],
            "events": [{"t": 2.1, "kind": "oom_kill", "detail": "1 process killed"}],
        },
    }


def test_timeline_as_plain_lists() -> None:
    r = IsolatedResult.from_record(_timeline_record())
    tl = r.timeline
    assert tl is not None and tl["interval_s"] == 1.0
    assert tl["t"] == [1.0, 2.0] and tl["memory_bytes"] == [10, 20]
    assert tl["processes"] == [1, 2] and tl["memory_pressure"] == [None, 3.5]
    assert tl["io_read_bytes"] == [None, None]
    assert tl["events"] == [{"t": 2.1, "kind": "oom_kill", "detail": "1 process killed"}]
    assert IsolatedResult.from_record({"outcome": {"reason": "exited"}}).timeline is None
    # `timeline=` is corral run's --timeline.
    assert RunOptions(command=["x"], timeline="500ms").cli_flags()[-2:] == ["--timeline", "500ms"]
    assert "--timeline" not in RunOptions(command=["x"]).cli_flags()


def test_timeline_frame_with_and_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    r = IsolatedResult.from_record(_timeline_record())
    # Without pandas: a clear ImportError.
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        r.timeline_frame()
    # With it: one column per field, one row per point.
    fake = types.ModuleType("pandas")
    fake.DataFrame = lambda d: ("frame", d)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pandas", fake)
    kind, cols = r.timeline_frame()
    assert kind == "frame" and cols["t"] == [1.0, 2.0] and cols["cpu_s"] == [0.5, 1.0]
    with pytest.raises(ValueError, match="no timeline"):
        IsolatedResult.from_record({"outcome": {}}).timeline_frame()
