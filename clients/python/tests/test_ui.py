"""The service's live page (`GET /ui`) in a real headless browser: Debian's `chromium`
driven through `chromedriver`'s WebDriver HTTP API (plain urllib, no selenium), against
a real `corral serve` on a loopback port with a bearer token.

The page loads, asks for the token while it has none, shows a running run whose memory
line grows from one second to the next, and a run killed by its memory limit with the
reason `oom` (and its full record on click); a page opened mid-run draws the run's
readings so far (`GET /runs/{id}/timeline`). The screenshots it takes are kept in
target/ui-screenshots/ (their paths are printed).

Without chromium and chromedriver (apt-get install chromium chromium-driver) the test
is skipped with that reason; in CI (conftest's strict mode) that skip is a failure."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar

import pytest

import corral

from conftest import REPO, free_port, tcp_serve

pytestmark = pytest.mark.usefixtures("corral_bin")

TOKEN = "corral-ui-test-token-0123456789"
SHOTS = REPO / "target" / "ui-screenshots"
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
T = TypeVar("T")


def _eventually(what: str, within: float, f: Callable[[], Optional[T]]) -> T:
    t = time.monotonic()
    while True:
        v = f()
        if v is not None:
            return v
        assert time.monotonic() - t < within, f"{what}: not within {within} s"
        time.sleep(0.2)


def _browser() -> tuple[str, str]:
    """chromium and chromedriver ($CORRAL_TEST_CHROMIUM and $CORRAL_TEST_CHROMEDRIVER,
    else on PATH), or a skip that says what is missing."""
    chromium = os.environ.get("CORRAL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CORRAL_TEST_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver))
               if not path or not os.access(path, os.X_OK)]
    if missing or not chromium or not driver:
        pytest.skip(
            f"no headless browser ({', '.join(missing)} not found): the live page's test "
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
    return chromium, driver


class WebDriver:
    """The few WebDriver commands the test needs, as HTTP calls to chromedriver."""

    def __init__(self, driver: str, chromium: str, tmp: Path) -> None:
        self.port = free_port()
        self.log = open(tmp / "chromedriver.log", "wb")
        self.proc = subprocess.Popen(
            [driver, f"--port={self.port}"], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )
        _eventually("chromedriver answers", 30, lambda: self._ready() or None)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        # Root needs --no-sandbox; the new headless mode renders as a
                        # desktop chromium does.
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1400,1000",
                            f"--user-data-dir={tmp / 'chromium-profile'}",
                        ],
                    },
                }
            }
        }
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status")["ready"])
        except (OSError, urllib.error.URLError):
            return False

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.code} {e.read()[:2000]!r}") from None

    def cmd(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def go(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def click(self, css: str) -> None:
        """A real click; the page redraws its tables every second, so an element found
        just before a redraw may be stale: then it is found again."""
        for attempt in range(5):
            el = self.cmd("POST", "/element", {"using": "css selector", "value": css})
            eid = next(iter(el.values()))
            try:
                self.cmd("POST", f"/element/{eid}/click", {})
                return
            except AssertionError as e:
                if "stale element" not in str(e) or attempt == 4:
                    raise

    def screenshot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    chromium, driver = _browser()
    wd = WebDriver(driver, chromium, tmp_path)
    yield wd
    wd.quit()


@pytest.fixture
def tcp_service(corral_bin: str, tmp_path: Path) -> Iterator[str]:
    """`corral serve` on a loopback port; its one token is `nobody`'s."""
    with tcp_serve(corral_bin, tmp_path, TOKEN, "ui") as addr:
        yield addr


# Grows by 4 MiB every half second up to 160 MiB, then waits to be cancelled.
GROW = (
    "import time\n"
    "a = []\n"
    "for _ in range(40):\n"
    "    a.append(bytearray(4 << 20)); time.sleep(0.5)\n"
    "time.sleep(300)\n"
)
# Grows by 4 MiB every fifth of a second until its 96 MiB limit kills it (a few seconds:
# a few points in its timeline).
LEAK = "import time\na = []\nwhile True:\n    a.append(bytearray(4 << 20)); time.sleep(0.2)\n"


def test_live_page_in_chromium(browser: WebDriver, tcp_service: str, capsys: pytest.CaptureFixture[str]) -> None:
    api = corral.ServiceClient(tcp_service, token=TOKEN)
    page = f"http://{tcp_service}/ui"
    shots = []

    # Without a token the page loads and says what it needs.
    browser.go(page)
    said = _eventually(
        "the page asks for a token",
        20,
        lambda: (lambda t: t if t and "bearer token" in t else None)(
            browser.js("return document.getElementById('status').textContent")
        ),
    )
    assert "#token=" in said, said
    shots.append(browser.screenshot("ui-no-token"))

    grow = api.submit({"command": [PY, "-c", GROW],
                       "limits": {"memory": "256M", "cpus": 0.25, "timeout": "2m"}})["id"]
    oom = api.submit({"command": [PY, "-c", LEAK],
                      "limits": {"memory": "96M", "cpus": 0.25, "timeout": "1m"}})["id"]
    def readings(run: str) -> int:
        status, _, raw = api.request("GET", f"/runs/{run}/timeline")
        assert status == 200, raw
        return len(json.loads(raw)["points"])

    try:
        # Opened when the run already has readings: the page draws them too (its
        # timeline so far), not only what it reads from then on.
        before = _eventually("3 readings of the running run", 30, lambda: readings(grow) if readings(grow) >= 3 else None)
        browser.go(f"{page}#token={TOKEN}")
        # The token left the address bar for the tab's sessionStorage.
        assert browser.js("return location.hash") == ""
        assert browser.js("return sessionStorage.getItem('corral-token')") == TOKEN

        line = (
            "var r = document.querySelector('#running #run-' + CSS.escape(arguments[0]));"
            "if (!r) return null;"
            "var p = r.querySelector('svg polyline.mem');"
            "return {n: +r.querySelector('svg').getAttribute('data-points'),"
            "        points: p ? p.getAttribute('points') : '',"
            "        peak: r.querySelector('.peak').textContent,"
            "        owner: r.querySelector('.owner').textContent};"
        )
        first = _eventually(
            "the running run is drawn with its readings so far",
            30,
            lambda: (lambda v: v if v and v["n"] >= before else None)(browser.js(line, grow)),
        )
        assert first["owner"] == "nobody", first
        # The page reads once a second; on a loaded machine a reading can come late, so
        # the line has a while to grow (it must grow, not merely be redrawn).
        def grown() -> Optional[dict[str, Any]]:
            v = browser.js(line, grow)
            assert v is not None, "the run left the running table"
            return v if v["n"] > first["n"] and v["points"] != first["points"] else None

        second = _eventually("the running run's line grows", 15, grown)
        assert second["n"] > first["n"], (first, second)
        shots.append(browser.screenshot("ui-running"))

        # The OOM run, once finished, with its reason, and its full record on click.
        done, st = api.wait(oom, timeout=60)
        assert done and st["record"]["outcome"]["reason"] == "oom", st
        reason = _eventually(
            "the OOM run's reason is shown",
            20,
            lambda: browser.js(
                "var r = document.querySelector('#finished #run-' + CSS.escape(arguments[0]));"
                "return r ? r.querySelector('.reason').textContent : null;",
                oom,
            ),
        )
        assert reason == "oom"
        browser.click(f"#finished #run-{oom}")
        record = _eventually(
            "the clicked run's record is shown",
            20,
            lambda: (lambda t: t or None)(
                browser.js("return document.getElementById('detail').hidden ? ''"
                           " : document.getElementById('detail-json').textContent")
            ),
        )
        shown = json.loads(record)
        assert shown["id"] == oom and shown["record"]["outcome"]["reason"] == "oom", record[:2000]
        drawn = browser.js(
            "var s = document.querySelector('#detail-chart svg');"
            "return {n: +s.getAttribute('data-points'),"
            "        mem: s.querySelector('polyline.mem').getAttribute('points').split(' ').length,"
            "        events: Array.from(s.querySelectorAll('line.event')).map(function (l) {"
            "            return l.getAttribute('class'); })};"
        )
        timeline = shown["record"]["timeline"]
        assert drawn["n"] == len(timeline["points"]) >= 2, (drawn, timeline)
        assert drawn["mem"] == len([p for p in timeline["points"] if p.get("memory_bytes") is not None]), drawn
        assert len(drawn["events"]) == len(timeline["events"]), (drawn, timeline["events"])
        shots.append(browser.screenshot("ui-oom"))
    finally:
        for run in (grow, oom):
            try:
                api.cancel(run)
            except corral.CorralError:
                pass
        with capsys.disabled():
            for s in shots:
                print(f"\ntest_ui: screenshot {s}")
