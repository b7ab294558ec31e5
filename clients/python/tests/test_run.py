"""isolated_run against the real corral binary."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Optional

import pytest

import corral
from conftest import processes_with, run_cgroups

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

pytestmark = pytest.mark.usefixtures("corral_bin")


def gone(r: corral.IsolatedResult) -> bool:
    """The run's cgroup was removed."""
    cg = r.record.get("cgroup")
    return cg is None or not os.path.exists(cg)


def test_normal_run() -> None:
    r = corral.isolated_run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert r.ok and r.returncode == 0 and r.reason == "exited"
    assert r.stdout == "out\n" and r.stderr == "err\n"
    assert r.usage["wall_s"] > 0
    assert r.usage["cpu_user_s"] + r.usage["cpu_system_s"] >= 0
    assert r.backend and r.record["schema"] == "corral.result/v1"
    assert r.record["profile"] == "default" and r.not_enforced == []
    assert r.limits_enforced["memory_bytes"] == 2 << 30
    assert not r.killed_by_limit and gone(r)


def test_string_command_and_exit_status() -> None:
    r = corral.isolated_run("sh -c 'echo \"a b\"; exit 3'")
    assert (r.returncode, r.reason, r.ok, r.stdout) == (3, "exited", False, "a b\n")


def test_memory_hog_is_oom_killed() -> None:
    r = corral.isolated_run([PY, "-c", "b = b'x' * (300 << 20)"], memory_limit_mb=64)
    assert (r.reason, r.returncode) == ("oom", 137)
    assert r.killed_by_limit and not r.ok
    assert "memory budget" in r.completion_notes
    assert r.limits_enforced["memory_bytes"] == 64 << 20
    assert r.record["events"]["oom_kill"] >= 1 and gone(r)


def test_timeline_of_a_growing_run() -> None:
    grow = "import time\nb = []\nfor i in range(6):\n    b.append(b'x' * (16 << 20)); time.sleep(0.2)\n"
    r = corral.isolated_run([PY, "-c", grow], timeline=0.1)
    assert r.ok, r.record
    tl = r.timeline
    assert tl is not None and tl["interval_s"] == 0.1
    n = len(tl["t"])
    assert n >= 5 and all(len(tl[c]) == n for c in corral.TIMELINE_COLUMNS)
    mem = [m for m in tl["memory_bytes"] if m is not None]
    assert max(mem) >= 64 << 20 and mem[0] < max(mem), mem
    assert corral.isolated_run(["true"]).timeline is None


def test_wall_clock_timeout() -> None:
    t0 = time.monotonic()
    r = corral.isolated_run(["sleep", "60"], timeout_seconds=1, grace_seconds=1)
    assert (r.reason, r.returncode) == ("timeout", 124)
    assert r.killed_by_limit and "wall-clock" in r.completion_notes
    assert time.monotonic() - t0 < 15 and gone(r)


def test_cpu_time_limit() -> None:
    r = corral.isolated_run([PY, "-c", "while True: pass"], cpu_time_seconds=1, timeout_seconds=30)
    assert (r.reason, r.returncode) == ("cpu_time", 124)
    assert r.usage["cpu_user_s"] + r.usage["cpu_system_s"] >= 0.9


def test_death_by_signal() -> None:
    r = corral.isolated_run([PY, "-c", "import os; os.kill(os.getpid(), 15)"])
    assert (r.reason, r.returncode, r.record["outcome"]["signal"]) == ("signaled", 143, 15)


def test_bad_input_raises_with_corrals_message() -> None:
    with pytest.raises(corral.CorralError) as e:
        corral.isolated_run(["true"], cpu_quota=0)
    assert e.value.returncode == 125
    assert 'invalid CPU quota "0"' in e.value.message
    assert not isinstance(e.value, corral.CorralRefused)
    with pytest.raises(corral.CorralError, match="unknown profile"):
        corral.isolated_run(["true"], profile="no-such-profile")
    with pytest.raises(corral.CorralError, match="timeout"):
        corral.isolated_run(["true"], timeout_seconds=-1)


def test_spawn_failures_are_results() -> None:
    r = corral.isolated_run(["/nonexistent/command"])
    assert (r.reason, r.returncode) == ("spawn_failed", 127)
    assert "not found" in r.completion_notes
    r = corral.isolated_run(["/etc/hostname"])
    assert (r.reason, r.returncode) == ("spawn_failed", 126)
    r = corral.isolated_run(["true"], cwd="/nonexistent/dir")
    assert (r.reason, r.returncode) == ("spawn_failed", 125)
    assert "working directory" in r.completion_notes


def test_env_added_and_cleared(tmp_path: Path) -> None:
    os.environ["CORRAL_TEST_INHERITED"] = "yes"
    try:
        code = "import os; print(os.environ.get('CORRAL_TEST_INHERITED'), os.environ.get('FOO'))"
        r = corral.isolated_run([PY, "-c", code], env={"FOO": "a=b c"})
        assert r.stdout == "yes a=b c\n"
        r = corral.isolated_run(["/usr/bin/env"], env={"ONLY": "1"}, clear_env=True)
        assert r.stdout == "ONLY=1\n"
    finally:
        del os.environ["CORRAL_TEST_INHERITED"]


def test_cwd(tmp_path: Path) -> None:
    r = corral.isolated_run(["sh", "-c", "pwd; echo x > here.txt"], cwd=tmp_path)
    assert r.ok and r.stdout == f"{tmp_path}\n"
    assert (tmp_path / "here.txt").read_text() == "x\n"
    assert r.record["cwd"] == str(tmp_path)


def test_output_limit() -> None:
    r = corral.isolated_run([PY, "-c", "print('y' * (3 << 20))"], output_limit_mb=1)
    assert r.ok and len(r.stdout or "") == 1 << 20
    assert r.record["output"]["stdout"]["dropped_bytes"] > 0


def test_no_capture_goes_to_our_fds(capfd: pytest.CaptureFixture[str]) -> None:
    r = corral.isolated_run(["sh", "-c", "echo to-stdout; echo to-stderr >&2"], capture_output=False)
    assert r.ok and r.stdout is None and r.stderr is None
    out, err = capfd.readouterr()
    assert "to-stdout" in out and "to-stderr" in err


def test_limits_from_mapping_and_file(tmp_path: Path) -> None:
    r = corral.isolated_run(["true"], limits_from={"memory_limit_mb": 100, "limits": {"pids": 7}})
    assert r.limits_enforced["memory_bytes"] == 100 << 20 and r.limits_enforced["pids"] == 7
    meta = tmp_path / "analysis.json"
    meta.write_text(json.dumps({"profile": "tool", "timeout_seconds": 42}))
    r = corral.isolated_run(["true"], limits_from=meta, pids_limit=9)
    assert r.record["profile"] == "tool"
    assert r.limits_enforced["timeout_s"] == 42 and r.limits_enforced["pids"] == 9


def test_profile_helpers() -> None:
    r = corral.run_post_process_isolated(["true"])
    assert r.ok and r.record["profile"] == "post_process" and r.limits_enforced["pids"] == 128
    r = corral.run_tool_isolated("true", cpu_quota=0.25)
    assert r.record["profile"] == "tool" and r.limits_enforced["cpus"] == 0.25


def test_profiles() -> None:
    by_name = {p["name"]: p for p in corral.profiles()}
    assert {"default", "notebook", "post_process", "tool"} <= set(by_name)
    assert by_name["notebook"]["pids"] == 512
    assert by_name["notebook"]["memory_bytes"] == 2 << 30


def test_run_id_and_interrupt_cleans_up() -> None:
    """An exception in the caller (here from SIGALRM) stops corral cleanly: the
    command is killed and its cgroup removed before the exception propagates."""
    run_id = "pytest-" + uuid.uuid4().hex[:8]
    marker = f"{61 + int(uuid.uuid4().hex[:4], 16) % 1000 / 1000:.3f}"

    class Alarm(Exception):
        pass

    def on_alarm(signum: int, frame: Optional[FrameType]) -> None:
        raise Alarm()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(1)
    try:
        with pytest.raises(Alarm):
            corral.isolated_run(["sleep", marker], run_id=run_id)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert processes_with(f"sleep {marker}") == []
    assert run_cgroups(run_id) == []


def test_run_id() -> None:
    run_id = "pytest-" + uuid.uuid4().hex[:8]
    r = corral.isolated_run(["true"], run_id=run_id)
    assert r.run_id == run_id and run_cgroups(run_id) == []


def _status_field(text: str, key: str) -> str:
    return next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(key + ":"))


def test_sandbox_layers_are_applied_and_reported() -> None:
    probe = [
        sys.executable,
        "-c",
        "print(open('/proc/self/status').read()); print('--net--'); print(open('/proc/net/dev').read())",
    ]
    r = corral.isolated_run(probe)
    assert r.ok, r.stderr
    assert _status_field(r.stdout or "", "Seccomp") == "2"
    assert _status_field(r.stdout or "", "NoNewPrivs") == "1"
    iso = r.isolation
    assert iso["requested"]["network"] == "none" and iso["requested"]["syscalls"] == "default"
    assert iso["enforced"]["network"] == "loopback"
    assert iso["enforced"]["syscalls"]["policy"] == "corral-default"
    assert iso["not_enforced"] == []
    # /proc/net/dev of the run's own namespace: the loopback device only.
    net = (r.stdout or "").split("--net--")[1]
    devs = [ln.split(":")[0].strip() for ln in net.splitlines() if ":" in ln]
    assert devs == ["lo"], devs

    off = corral.isolated_run(probe, network="host", syscalls="off")
    assert off.ok, off.stderr
    assert _status_field(off.stdout or "", "Seccomp") == "0"
    assert off.isolation["enforced"]["network"] == "host"


def test_bad_sandbox_value_raises() -> None:
    with pytest.raises(corral.CorralError, match="network"):
        corral.isolated_run(["true"], network="sometimes")


def test_result_is_like_a_completed_process() -> None:
    import subprocess

    r = corral.isolated_run([PY, "-c", "import sys; d = sys.stdin.read(); print(d.upper()); sys.exit(3)"], input="abc")
    assert r.args == [PY, "-c", "import sys; d = sys.stdin.read(); print(d.upper()); sys.exit(3)"]
    assert (r.returncode, r.stdout) == (3, "ABC\n")
    with pytest.raises(subprocess.CalledProcessError) as e:
        r.check_returncode()
    assert isinstance(e.value, corral.CorralCalledProcessError)
    assert e.value.returncode == 3 and e.value.cmd == r.args and e.value.stdout == "ABC\n"
    assert e.value.record["id"] == r.run_id and e.value.reason == "exited"
    with pytest.raises(corral.CorralCalledProcessError):
        corral.isolated_run(["false"], check=True)
    assert corral.isolated_run(["true"], check=True).ok
    b = corral.isolated_run([PY, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"], text=False)
    assert b.stdout == bytes(range(256)) and b.stderr == b""
    assert corral.isolated_run(["cat"], input=b"\x00\xff").stdout == "\x00\ufffd"


def test_a_bad_limit_in_a_mapping_names_the_mapping_not_a_temporary_file() -> None:
    with pytest.raises(corral.CorralError) as e:
        corral.isolated_run(["true"], limits_from={"limits": {"pids": "lots"}})
    assert "limits_from (the mapping): key \"pids\"" in e.value.message, e.value.message
    assert "corral-py-" not in e.value.message and "limits.json" not in e.value.message
