"""A small client of the corral service's HTTP API, over a Unix socket or TCP.

``server`` is ``unix:/path/to.sock``, a path starting with ``/``, ``host:port`` or
``http://host:port``. Over TCP the service knows callers by their bearer token:
``$CORRAL_TOKEN`` (or ``token=``) is sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

from ._errors import CorralError, CorralRefused
from ._options import RunOptions
from ._result import IsolatedResult

#: How long one ``GET /runs/{id}/wait`` asks the service to hold the request.
WAIT_POLL_SECONDS = 30.0

#: How long a client waiting for a run keeps trying to reach a service that went away
#: (restarted, upgraded) before it gives up: ``$CORRAL_RECONNECT_SECONDS``, else 10 min.
RECONNECT_SECONDS = 600.0

T = TypeVar("T")


def _unreachable(e: CorralError) -> bool:
    """True for a service that did not answer (no HTTP status) or is shutting down."""
    return e.returncode is None or e.returncode == 503


def retrying(call: Callable[[], T], deadline_s: Optional[float] = None) -> T:
    """``call()``, tried again while the service cannot be reached (a restart), with a
    growing pause (0.2 s to 5 s), for up to ``deadline_s`` seconds
    (:data:`RECONNECT_SECONDS` or ``$CORRAL_RECONNECT_SECONDS``); then the last error."""
    if deadline_s is None:
        deadline_s = float(os.environ.get("CORRAL_RECONNECT_SECONDS") or RECONNECT_SECONDS)
    end = time.monotonic() + deadline_s
    pause = 0.2
    while True:
        try:
            return call()
        except CorralError as e:
            if not _unreachable(e) or time.monotonic() + pause > end:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection over an AF_UNIX stream socket."""

    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def parse_server(server: str) -> Tuple[str, str]:
    """``("unix", path)`` or ``("tcp", "host:port")``."""
    if server.startswith("unix:"):
        return "unix", server[len("unix:") :].lstrip() or "/"
    if server.startswith("/"):
        return "unix", server
    if "://" in server:
        u = urllib.parse.urlsplit(server)
        if u.scheme != "http" or not u.netloc:
            raise ValueError(f"unsupported corral server {server!r}: use http://host:port")
        return "tcp", u.netloc
    return "tcp", server


class ServiceClient:
    """The corral service's API. Every method raises :class:`CorralError` on a
    connection failure or an error answer."""

    def __init__(
        self, server: str, timeout: float = 60.0, token: Optional[str] = None
    ) -> None:
        self.server = server
        self.kind, self.address = parse_server(server)
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get("CORRAL_TOKEN") or None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.kind == "unix":
            return _UnixHTTPConnection(self.address, timeout=timeout)
        return http.client.HTTPConnection(self.address, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Tuple[int, str, bytes]:
        """One request; returns (status, content type, body)."""
        conn = self._connection(timeout if timeout is not None else self.timeout)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise CorralError(f"corral service at {self.server}: {method} {path}: {e}") from e
        finally:
            conn.close()

    def _json(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        ok: Tuple[int, ...] = (200,),
        timeout: Optional[float] = None,
    ) -> Tuple[int, Dict[str, Any]]:
        status, _, raw = self.request(method, path, body, timeout)
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            data = {"error": raw.decode("utf-8", errors="replace").strip()}
        if status not in ok:
            msg = data.get("error") if isinstance(data, dict) else None
            msg = str(msg or f"HTTP {status}")
            cls = CorralRefused if msg.startswith("refusing to run") else CorralError
            raise cls(msg, returncode=status)
        if not isinstance(data, dict):
            raise CorralError(f"corral service: {method} {path}: expected a JSON object")
        return status, data

    def health(self) -> Dict[str, Any]:
        """``GET /health``."""
        return self._json("GET", "/health")[1]

    def submit(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """``POST /runs``; returns ``{"id": ..., "state": ...}``."""
        return self._json("POST", "/runs", body, ok=(200, 201))[1]

    def get(self, run_id: str) -> Dict[str, Any]:
        """``GET /runs/{id}``."""
        return self._json("GET", f"/runs/{_q(run_id)}")[1]

    def wait(self, run_id: str, timeout: float = WAIT_POLL_SECONDS) -> Tuple[bool, Dict[str, Any]]:
        """``GET /runs/{id}/wait``: (done, body) after at most about ``timeout`` s."""
        status, data = self._json(
            "GET",
            f"/runs/{_q(run_id)}/wait?timeout={timeout:g}",
            ok=(200, 202),
            timeout=timeout + self.timeout,
        )
        return status == 200 and data.get("state") in ("done", "lost"), data

    def output(self, run_id: str, stream: str) -> str:
        """``GET /runs/{id}/output?stream=stdout|stderr`` as text."""
        status, _, raw = self.request("GET", f"/runs/{_q(run_id)}/output?stream={stream}")
        if status == 404:
            return ""
        if status != 200:
            # 410: captured, then removed after the service's --keep-output.
            try:
                why = str(json.loads(raw).get("error") or "")
            except (ValueError, AttributeError):
                why = ""
            raise CorralError(
                f"corral service: output of {run_id}: {why or f'HTTP {status}'}",
                returncode=status,
            )
        return raw.decode("utf-8", errors="replace")

    def cancel(self, run_id: str) -> None:
        """``POST /runs/{id}/cancel``."""
        self._json("POST", f"/runs/{_q(run_id)}/cancel", ok=(200, 202, 204))


def _q(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def run_service(opts: RunOptions, server: str, capture_output: bool = True) -> IsolatedResult:
    """Submits the run, waits for it, fetches its output; see :func:`corral.isolated_run`.
    An interrupt while waiting cancels the run before it propagates."""
    if opts.backend is not None:
        raise ValueError("backend= cannot be chosen with server=: the service picks it")
    client = ServiceClient(server)
    run_id = str(client.submit(opts.service_body())["id"])
    try:
        done = False
        data: Dict[str, Any] = {}
        while not done:
            # A service that restarts meanwhile is waited for: it answers again with
            # the run's real end (``lost`` when it was in flight at a crash).
            done, data = retrying(lambda: client.wait(run_id))
    except BaseException:
        try:
            client.cancel(run_id)
        except CorralError:
            pass
        raise
    record = data.get("record")
    if not isinstance(record, dict):
        record = _lost_record(run_id, data)
    stdout = retrying(lambda: client.output(run_id, "stdout")) if capture_output else None
    stderr = retrying(lambda: client.output(run_id, "stderr")) if capture_output else None
    return IsolatedResult.from_record(record, stdout, stderr)


def _lost_record(run_id: str, data: Dict[str, Any]) -> Dict[str, Any]:
    """A stand-in record for a run the service lost without recording it."""
    return {
        "schema": "corral.result/v1",
        "id": run_id,
        "outcome": {"reason": "lost", "exit_code": 125, "signal": None, "process_exit_code": None},
        "usage": {},
        "limits": {"enforced": {}, "not_enforced": []},
        "backend": "",
        "notes": f"The corral service lost this run (state {data.get('state')!r}) "
        "and has no record of how it ended.",
        "submitted_at": data.get("submitted_at"),
    }
