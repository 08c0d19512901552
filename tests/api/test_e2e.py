"""The real ``leadscore serve`` in a subprocess, driven over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.server import free_port

from .helpers import BIG_MANUFACTURER, event, qualified_stream

pytestmark = pytest.mark.e2e

LEADSCORE = shutil.which("leadscore", path=str(Path(sys.executable).parent)) or "leadscore"


def _env(database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
    env.update({"LEADSCORE_ADMIN_API_KEY": "e2e-admin", "LEADSCORE_RUN_WORKER": "false"})
    if database_url is not None:
        env["LEADSCORE_DATABASE_URL"] = database_url
    env.update(extra)
    return env


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    # SQLite: the embedded default (./leadscore.db in the working directory).
    url = None if database_url.startswith("sqlite") else database_url
    env = _env(url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The with block closes the output pipe (left open, it is a ResourceWarning).
    with subprocess.Popen(
        [LEADSCORE, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    output = process.stdout.read().decode() if process.stdout else ""
                    raise AssertionError(f"leadscore serve exited early:\n{output}")
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("leadscore serve did not become ready")
                time.sleep(0.1)
            yield base, tmp_path, env
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_serve_end_to_end(served: tuple[str, Path, dict[str, str]], database_url: str) -> None:
    base, workdir, env = served
    if database_url.startswith("sqlite"):
        assert (workdir / "leadscore.db").exists()
    admin = {"Authorization": "Bearer e2e-admin"}
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.post("/v1/events", json=event()).status_code == 401

        # a key made from the shell works against the running server
        created = subprocess.run(
            [
                LEADSCORE,
                "apikey",
                "create",
                "--name",
                "shell",
                "--scope",
                "events:write",
                "--scope",
                "leads:read",
            ],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        shell_key = created.stdout.strip()
        assert shell_key.startswith("lsk_")
        writer = {"Authorization": f"Bearer {shell_key}"}

        results = http.post(
            "/v1/events", json={"events": qualified_stream("e2e@x.it")}, headers=writer
        ).json()["results"]
        assert {r["status"] for r in results} == {"accepted"}
        lead_id = results[0]["lead_id"]
        lead = http.get(f"/v1/leads/{lead_id}", headers=writer).json()
        assert lead["letter"] == "A" and lead["stage"] in ("mql", "sql")
        assert (
            http.patch(
                f"/v1/leads/{lead_id}", json={"attributes": {"role": "CEO"}}, headers=writer
            ).status_code
            == 403
        )
        patched = http.patch(
            f"/v1/leads/{lead_id}", json={"attributes": BIG_MANUFACTURER}, headers=admin
        )
        assert patched.status_code == 200
        history = http.get(f"/v1/leads/{lead_id}/history", headers=admin).json()["items"]
        assert history
        assert http.get("/v1/rulesets", headers=admin).json()["items"][0]["primary"] is True
        too_big = http.post("/v1/events", content=b"x" * (1024 * 1024 + 1), headers=admin)
        assert too_big.status_code == 413
        assert too_big.headers["content-type"].startswith("application/problem+json")
        assert "leadscore_http_requests_total" in http.get("/metrics").text


def test_serve_refuses_invalid_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "broken.yaml").write_text("ruleset: broken\nversion: one\ncomponents: 7\n")
    result = subprocess.run(
        [LEADSCORE, "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=_env(f"sqlite:///{tmp_path / 'x.db'}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "broken.yaml:" in result.stderr
