"""Shared fixtures: the real corral binary (skipped with a reason when it cannot run
here, failed instead in CI where the step requires it) and helpers to check that a run
left nothing behind."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[3]


def _strict() -> bool:
    """True where a skip must not pass: in CI (`CI` set, not `0`/`false`) with a step that
    declares what it requires in CORRAL_TEST_REQUIRE (`cargo xtask test`'s python step:
    root and the host's cgroup hierarchy), as in the Rust suites (corral-testkit)."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false")
    return ci and bool(os.environ.get("CORRAL_TEST_REQUIRE", "").strip())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Turns a skipped test into a failure where the step requires it to run."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if _strict() and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"cannot skip here (CI, CORRAL_TEST_REQUIRE set): {rep.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """The same for a whole module skipped at import (a missing notebook package)."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if _strict() and rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = f"cannot skip here (CI, CORRAL_TEST_REQUIRE set): {rep.longrepr}"


def _binary() -> str:
    return os.environ.get("CORRAL_BIN") or str(REPO / "target" / "debug" / "corral")


@pytest.fixture(scope="session")
def corral_bin() -> Iterator[str]:
    """The real corral binary, exported as CORRAL_BIN for the whole test session.
    Skips when it is missing, when we are not root, or when it cannot create a cgroup."""
    path = _binary()
    if not os.access(path, os.X_OK):
        pytest.skip(f"no corral binary at {path} (build it: cargo build -p corral-cli, or set CORRAL_BIN)")
    if os.geteuid() != 0:
        pytest.skip("these tests create cgroups and need root")
    probe = subprocess.run([path, "run", "-q", "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"corral cannot run here (exit {probe.returncode}): {probe.stderr.strip()}")
    mp = pytest.MonkeyPatch()
    mp.setenv("CORRAL_BIN", path)
    mp.delenv("CORRAL_SERVER", raising=False)
    yield path
    mp.undo()


def run_cgroups(run_id: str) -> List[str]:
    """The cgroup directories of one run that still exist (v1 hierarchies or v2)."""
    patterns = [f"/sys/fs/cgroup/*/corral/{run_id}.*", f"/sys/fs/cgroup/corral/{run_id}.*"]
    return [d for p in patterns for d in glob.glob(p)]


def processes_with(marker: str) -> List[int]:
    """Pids whose command line contains ``marker``."""
    found = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(os.path.join(d, "cmdline"), "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(os.path.basename(d)) != os.getpid():
            found.append(int(os.path.basename(d)))
    return found


def free_port() -> int:
    """A loopback TCP port free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tcp_serve(corral_bin: str, tmp_path: Path, token: str, name: str) -> Iterator[str]:
    """`corral serve` on a loopback port (its address is yielded) with one bearer token,
    `nobody`'s, so whatever the requests run executes as nobody, in the default sandbox;
    a private cgroup root named after ``name``, a 1G/1 CPU budget; SIGTERM at the end."""
    import corral

    tokens = tmp_path / "tokens"
    tokens.write_text(f"nobody {token}\n")
    tokens.chmod(0o600)
    addr = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            corral_bin,
            "serve",
            "--listen",
            addr,
            "--token-file",
            str(tokens),
            "--ledger",
            str(tmp_path / "state" / "ledger.db"),
            "--cgroup-root",
            f"/corral-pytest-{name}-{os.getpid()}",
            "--budget-memory",
            "1G",
            "--budget-cpus",
            "1",
            "--drain-timeout",
            "0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    client = corral.ServiceClient(addr, timeout=2, token=token)
    t = time.monotonic()
    while True:
        try:
            client.health()
            break
        except corral.CorralError:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() - t < 30, "corral serve did not answer within 30 s"
            time.sleep(0.05)
    try:
        yield addr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
