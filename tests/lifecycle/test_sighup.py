"""``kill -HUP`` on a real ``leadscore serve`` reloads the rules folder, or says why it did not."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import httpx
from tests.server import free_port

from .helpers import (
    INVALID,
    INVALID_LINE,
    PRIMARY,
    cli_env,
    eventually,
    leadscore_command,
    write_rules,
)

KEY = "sighup-admin-key"


def _active(base: str) -> int | None:
    try:
        response = httpx.get(
            f"{base}/v1/rulesets", headers={"Authorization": f"Bearer {KEY}"}, timeout=5
        )
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    return {i["name"]: i["version"] for i in response.json()["items"]}.get(PRIMARY)


def test_sighup_reloads_the_rules_of_a_running_server(database_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    path = write_rules(rules, version=1, visit=10)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env(database_url, rules, LEADSCORE_ADMIN_API_KEY=KEY, LEADSCORE_RUN_WORKER="false")
    process = subprocess.Popen(
        [*leadscore_command(), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        eventually(lambda: _active(base) == 1, timeout=30, what="the server to start on v1")

        write_rules(rules, version=2, visit=30)
        process.send_signal(signal.SIGHUP)
        eventually(lambda: _active(base) == 2, what="SIGHUP to activate v2")

        path.write_text(INVALID, encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        eventually(
            lambda: any(f"{path}:{INVALID_LINE}:" in line for line in log),
            what="the refused reload's FILE:LINE in the log",
        )
        assert process.poll() is None, "SIGHUP must not end the server"
        assert _active(base) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        finally:
            process.kill()
            reader.join(timeout=5)
            process.stderr.close()
