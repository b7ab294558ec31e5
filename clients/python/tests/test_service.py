"""isolated_run(server=...) against a small fake of the corral service's HTTP API,
served on a Unix socket (and on TCP) from a thread."""

from __future__ import annotations

import json
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

import corral
from corral._service import parse_server


def record(run_id: str, reason: str = "exited", code: int = 0, notes: str = "Finished normally.") -> Dict[str, Any]:
    return {
        "schema": "corral.result/v1",
        "id": run_id,
        "command": ["python3", "analysis.py"],
        "cwd": "/w",
        "profile": "default",
        "backend": "cgroup2",
        "backend_reason": "fake",
        "cgroup": None,
        "limits": {
            "requested": {"memory_bytes": 536870912},
            "enforced": {"memory_bytes": 536870912},
            "not_enforced": [{"limit": "swap_bytes", "why": "no swap accounting"}],
            "grace_s": 5.0,
        },
        "outcome": {"reason": reason, "exit_code": code, "signal": None, "process_exit_code": code},
        "events": {},
        "usage": {"wall_s": 1.5, "cpu_user_s": 1.0, "cpu_system_s": 0.1},
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.500Z",
        "notes": notes,
        "corral_version": "0.1.0",
    }


class FakeService:
    """Runs nothing: each run is 'running' for ``waits_before_done`` wait calls, then
    done with a canned record chosen from the command's first word."""

    def __init__(self) -> None:
        self.runs: Dict[str, Dict[str, Any]] = {}
        self.requests: List[str] = []
        self.cancelled: List[str] = []
        self.lock = threading.Lock()

    def handle(self, method: str, url: str, body: Optional[Dict[str, Any]]) -> "tuple[int, Any]":
        u = urllib.parse.urlsplit(url)
        q = dict(urllib.parse.parse_qsl(u.query))
        parts = [urllib.parse.unquote(p) for p in u.path.strip("/").split("/")]
        with self.lock:
            self.requests.append(f"{method} {url}")
            if method == "GET" and parts == ["health"]:
                return 200, {"status": "ok"}
            if method == "POST" and parts == ["runs"]:
                assert body is not None
                if not body.get("command"):
                    return 400, {"error": "no command given"}
                if body["limits"].get("cpus") == 0:
                    return 400, {"error": 'invalid CPU quota "0": must be greater than zero'}
                if body["limits"].get("require_isolation"):
                    return 422, {"error": "refusing to run: isolation is required but ..."}
                run_id = body.get("id") or f"run{len(self.runs) + 1}"
                self.runs[run_id] = {"body": body, "waits": 0, "state": "queued"}
                return 201, {"id": run_id, "state": "queued"}
            if len(parts) < 2 or parts[0] != "runs" or parts[1] not in self.runs:
                return 404, {"error": "no such run"}
            run_id, run = parts[1], self.runs[parts[1]]
            rest = parts[2:]
            if method == "POST" and rest == ["cancel"]:
                self.cancelled.append(run_id)
                return 202, {"id": run_id, "state": run["state"]}
            if method == "GET" and rest == ["output"]:
                text = {"stdout": "hello\n", "stderr": "warn\n"}[q["stream"]]
                return 200, text
            if method == "GET" and rest in ([], ["wait"]):
                if rest == ["wait"]:
                    assert float(q["timeout"]) > 0
                    run["waits"] += 1
                first = run["body"]["command"][0]
                if run["waits"] >= 2:
                    run["state"] = "lost" if first == "lose" else "done"
                else:
                    run["state"] = "running"
                rec = None
                if run["state"] == "done":
                    rec = record(run_id, "oom", 137, "Killed: memory budget.") if first == "hog" else record(run_id)
                data = {"id": run_id, "state": run["state"], "submitted_at": "t", "record": rec}
                return (200 if run["state"] in ("done", "lost") or rest == [] else 202), data
            return 405, {"error": "method not allowed"}


def make_handler(fake: FakeService) -> type:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            status, data = fake.handle(method, self.path, body)
            raw = data.encode() if isinstance(data, str) else json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(data, str) else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def unix_server(tmp_path: Path, fake: FakeService) -> Iterator[str]:
    path = str(tmp_path / "corral.sock")
    srv = UnixHTTPServer(path, make_handler(fake))
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield "unix:" + path
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def tcp_server(fake: FakeService) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_parse_server() -> None:
    assert parse_server("unix:/run/corral.sock") == ("unix", "/run/corral.sock")
    assert parse_server("/run/corral.sock") == ("unix", "/run/corral.sock")
    assert parse_server("http://h:8080") == ("tcp", "h:8080")
    assert parse_server("h:8080") == ("tcp", "h:8080")


def test_run_through_unix_socket(unix_server: str, fake: FakeService, tmp_path: Path) -> None:
    assert corral.ServiceClient(unix_server).health() == {"status": "ok"}
    r = corral.isolated_run(
        ["python3", "analysis.py"],
        cwd=tmp_path,
        env={"A": "1"},
        timeout_seconds=30,
        memory_limit_mb=512,
        cpu_quota=0.5,
        pids_limit=64,
        profile="default",
        grace_seconds=5,
        output_limit_mb=64,
        server=unix_server,
    )
    assert r.ok and r.reason == "exited" and r.returncode == 0
    assert (r.stdout, r.stderr) == ("hello\n", "warn\n")
    assert r.backend == "cgroup2" and r.usage["wall_s"] == 1.5
    assert r.not_enforced == [{"limit": "swap_bytes", "why": "no swap accounting"}]
    body = fake.runs[r.run_id]["body"]
    assert body == {
        "command": ["python3", "analysis.py"],
        "cwd": str(tmp_path),
        "env": {"A": "1"},
        "clear_env": False,
        "profile": "default",
        "limits": {"memory": "512M", "cpus": 0.5, "pids": 64, "timeout": "30s", "grace": "5s", "output_limit": "64M"},
        "id": None,
        "idempotency_key": None,
        "priority": 0,
    }
    waits = [q for q in fake.requests if "/wait?" in q]
    assert len(waits) == 2  # looped on /wait while the run was running
    assert any("/output?stream=stdout" in q for q in fake.requests)


def test_run_through_tcp_and_env_var(tcp_server: str, fake: FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_SERVER", tcp_server)
    monkeypatch.setenv("CORRAL_BIN", "/nonexistent")  # must not be used
    r = corral.run_tool_isolated("hog --size 1G", run_id="my-run", capture_output=False)
    assert (r.reason, r.returncode, r.killed_by_limit) == ("oom", 137, True)
    assert r.completion_notes == "Killed: memory budget." and r.stdout is None
    assert fake.runs["my-run"]["body"]["profile"] == "tool"
    assert fake.runs["my-run"]["body"]["command"] == ["hog", "--size", "1G"]
    assert not any("/output" in q for q in fake.requests)


def test_errors_from_service(unix_server: str) -> None:
    with pytest.raises(corral.CorralError, match="invalid CPU quota") as e:
        corral.isolated_run(["x"], cpu_quota=0, server=unix_server)
    assert e.value.returncode == 400
    with pytest.raises(corral.CorralRefused):
        corral.isolated_run(["x"], require_isolation=True, server=unix_server)
    with pytest.raises(ValueError):
        corral.isolated_run(["x"], backend="cgroup1", server=unix_server)


def test_unreachable_service(tmp_path: Path) -> None:
    with pytest.raises(corral.CorralError, match="corral service"):
        corral.isolated_run(["x"], server=str(tmp_path / "nothing.sock"))


def test_lost_run(unix_server: str) -> None:
    r = corral.isolated_run(["lose"], server=unix_server)
    assert r.reason == "lost" and not r.ok and "lost" in r.completion_notes


def test_interrupt_while_waiting_cancels(unix_server: str, fake: FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: corral.ServiceClient, run_id: str, timeout: float = 30) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(corral.ServiceClient, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        corral.isolated_run(["python3", "x.py"], server=unix_server)
    assert fake.cancelled == ["run1"]


def test_notebook_through_service(
    unix_server: str, fake: FakeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_NBCONVERT", "jupyter nbconvert")
    nb = tmp_path / "a.ipynb"
    nb.write_text("{}")
    r = corral.run_notebook_isolated(nb, server=unix_server, memory_limit_mb=1024)
    assert r.output_path == str(tmp_path / "a.executed.ipynb")
    body = fake.runs[r.run_id]["body"]
    assert body["profile"] == "notebook" and body["limits"] == {"memory": "1024M"}
    assert body["command"][:4] == ["jupyter", "nbconvert", "--to", "notebook"]
    assert "--execute" in body["command"] and str(nb) in body["command"]
    assert body["cwd"] == str(tmp_path)
