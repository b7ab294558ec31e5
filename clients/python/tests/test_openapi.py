"""The corral service's /openapi.json against the live service: schemathesis (every
check, a modest number of cases) so that the document cannot drift from the server,
and the mismatches it found once, asserted one by one.

schemathesis (pinned by run-tests.sh, in its own virtualenv: it needs Python >= 3.11)
is found through $CORRAL_SCHEMATHESIS."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

import corral
from conftest import tcp_serve

pytestmark = pytest.mark.usefixtures("corral_bin")

HERE = Path(__file__).resolve().parent
TOKEN = "corral-openapi-test-token"


@pytest.fixture
def tcp_service(corral_bin: str, tmp_path: Path) -> Iterator[str]:
    """`corral serve` on a loopback port with a bearer token of `nobody`, so whatever
    the generated requests run executes as nobody, in the default sandbox."""
    with tcp_serve(corral_bin, tmp_path, TOKEN, "openapi") as addr:
        yield addr


def _post(addr: str, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    c = corral.ServiceClient(addr, token=TOKEN)
    try:
        return 201, c.submit(body)
    except corral.CorralError as e:
        return int(e.returncode or 0), {"error": e.message}


def test_schemathesis_finds_no_mismatch(tcp_service: str, tmp_path: Path) -> None:
    st = os.environ.get("CORRAL_SCHEMATHESIS")
    if not st:
        pytest.skip("schemathesis is not installed (run-tests.sh installs it with Python >= 3.11)")
    argv = [
        st,
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"http://{tcp_service}/openapi.json",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "all",
        "--max-examples",
        "40",
        "--seed",
        "20261207",
    ]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # its .schemathesis/ cache
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    # It did test: every operation of the document, with generated cases, none failing.
    assert "Tested: 10" in proc.stdout and " passed" in proc.stdout, proc.stdout[-3000:]


def test_the_mismatches_schemathesis_found_once(tcp_service: str) -> None:
    """Each was valid by the document and refused by the server (or the reverse)."""
    c = corral.ServiceClient(tcp_service, token=TOKEN)
    for query in ("limit=10001", "limit=0", "state="):
        with pytest.raises(corral.CorralError) as e:
            c._json("GET", f"/runs?{query}")
        assert e.value.returncode == 400, query
    assert c._json("GET", "/runs?limit=10000")[0] == 200
    doc = c._json("GET", "/openapi.json")[1]
    submit = doc["components"]["schemas"]["SubmitRequest"]["properties"]
    assert submit["command"]["items"]["minLength"] == 1
    assert submit["idempotency_key"]["minLength"] == 1
    assert submit["cwd"]["pattern"] == "^/"
    for body in (
        {"command": [""]},
        {"command": ["true"], "idempotency_key": ""},
        {"command": ["true"], "cwd": "relative"},
    ):
        status, answer = _post(tcp_service, body)
        assert status == 400, (body, answer)
