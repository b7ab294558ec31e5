"""isolated_run(server=...) against a real `corral serve` that is killed and restarted
while the client waits: the client waits for it and reports the run's real end."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import corral

pytestmark = pytest.mark.usefixtures("corral_bin")


class Serve:
    """`corral serve` on a socket in ``tmp``, with a private cgroup root."""

    def __init__(self, binary: str, tmp: Path) -> None:
        self.sock = tmp / "corral.sock"
        self.argv = [
            binary,
            "serve",
            "--listen",
            str(self.sock),
            "--ledger",
            str(tmp / "state" / "ledger.db"),
            "--cgroup-root",
            f"/corral-pytest-restart-{os.getpid()}",
            "--budget-memory",
            "1G",
            "--budget-cpus",
            "1",
        ]
        self.tmp = tmp
        self.proc: "subprocess.Popen[bytes] | None" = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.tmp / f"serve-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        client = corral.ServiceClient(str(self.sock), timeout=2)
        t = time.monotonic()
        while True:
            try:
                client.health()
                return
            except corral.CorralError:
                assert self.proc.poll() is None, (self.tmp / f"serve-{self.starts}.log").read_text()
                assert time.monotonic() - t < 30, "corral serve did not answer within 30 s"
                time.sleep(0.05)

    def stop(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


@pytest.fixture
def serve(corral_bin: str, tmp_path: Path) -> Iterator[Serve]:
    s = Serve(corral_bin, tmp_path)
    s.start()
    yield s
    if s.proc is not None and s.proc.poll() is not None:
        # Killed and not restarted (a failed test): a clean start and stop removes
        # the cgroup tree it left.
        s.start()
    s.stop(signal.SIGTERM)


def test_a_waiting_client_survives_a_service_restart(serve: Serve, tmp_path: Path) -> None:
    results: List[corral.IsolatedResult] = []
    errors: List[BaseException] = []
    run_id = f"pyrestart{os.getpid()}"

    def client() -> None:
        try:
            results.append(
                corral.isolated_run(
                    ["sleep", "30"],
                    cwd=tmp_path,
                    memory_limit_mb=64,
                    cpu_quota=0.25,
                    server=str(serve.sock),
                    run_id=run_id,
                )
            )
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    api = corral.ServiceClient(str(serve.sock))
    deadline = time.monotonic() + 30
    state: Dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            state = api.get(run_id)
        except corral.CorralError:
            state = {}
        if state.get("state") == "running":
            break
        time.sleep(0.05)
    assert state.get("state") == "running", state
    # The service dies with the run in flight, and comes back a little later.
    serve.stop(signal.SIGKILL)
    time.sleep(1.5)
    assert t.is_alive(), f"the client gave up while the service was down: {errors}"
    serve.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the client did not come back after the restart"
    assert not errors, errors
    (r,) = results
    assert r.reason == "lost" and r.run_id == run_id, r.record
    assert "Lost" in r.completion_notes
