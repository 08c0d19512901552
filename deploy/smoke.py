"""Run the Dockerfile's install and start steps as plain commands, as CI does (no container engine).

1. ``deploy/install.sh`` (the image's build step) into a new virtual environment;
2. ``leadscore migrate`` (the compose file's migration step), then ``migrate --status``;
3. the image's ``CMD`` (read from the Dockerfile) with the virtual environment on ``PATH``, until
   the image's ``HEALTHCHECK`` command (also read from the Dockerfile) passes; then ``/readyz``,
   one event and the lead it made; then ``leadscore worker`` starts and stops on SIGTERM.

Each on a fresh SQLite file and, when ``LEADSCORE_TEST_DATABASE_URL`` names a PostgreSQL server,
on a new database there. Run with any Python 3.11+: ``python3 deploy/smoke.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "smoke-admin-key-0123456789"


def dockerfile_exec_forms() -> tuple[list[str], list[str]]:
    """The runtime stage's ``CMD`` and ``HEALTHCHECK ... CMD``, both in exec (JSON) form."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    cmd: list[str] | None = None
    health: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("HEALTHCHECK"):
            health = json.loads(stripped[stripped.index("CMD") + 3 :])
        elif stripped.startswith("CMD"):
            cmd = json.loads(stripped[3:])
    if cmd is None or health is None:
        raise SystemExit("the Dockerfile has no CMD or no HEALTHCHECK in exec form")
    return cmd, health


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(argv: list[str], env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", shlex.join(argv), flush=True)
    return subprocess.run(argv, env=env, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def request(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    req.add_header("Authorization", f"Bearer {ADMIN_KEY}")
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as answer:
        return answer.status, json.loads(answer.read() or b"{}")


def check(database_url: str, venv: Path, workdir: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "LEADSCORE_DATABASE_URL": database_url,
        "LEADSCORE_ADMIN_API_KEY": ADMIN_KEY,
        "LEADSCORE_ACCESS_LOG": "false",
    }
    if run(["leadscore", "migrate", "--status"], env, cwd=workdir).returncode != 3:
        raise SystemExit("migrate --status should report pending migrations on a new database")
    if run(["leadscore", "migrate"], env, cwd=workdir).returncode != 0:
        raise SystemExit("leadscore migrate failed")
    if run(["leadscore", "migrate", "--status"], env, cwd=workdir).returncode != 0:
        raise SystemExit("migrate --status still reports pending migrations")

    cmd, health = dockerfile_exec_forms()
    port = str(free_port())
    # The image listens on 8000; here another process may, so both commands get a free port.
    cmd = [port if part == "8000" else part for part in cmd]
    health = [part.replace(":8000/", f":{port}/") for part in health]
    print("+", shlex.join(cmd), flush=True)
    server = subprocess.Popen(cmd, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(health, env=env, capture_output=True, check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the image's HEALTHCHECK never passed")
            time.sleep(0.3)
        base = f"http://127.0.0.1:{port}"
        status, ready = request(f"{base}/readyz")
        assert status == 200, ready
        status, answer = request(
            f"{base}/v1/events",
            {
                "id": "smoke-1",
                "type": "page.viewed",
                "occurred_at": "2026-11-20T10:00:00Z",
                "lead": {"email": "smoke@example.com"},
                "properties": {"url": "https://example.com/prezzi"},
            },
        )
        assert status in (200, 201, 202), answer
        status, leads = request(f"{base}/v1/leads?email=smoke@example.com")
        assert status == 200 and leads.get("items"), leads
        print(f"ok: served, healthy, ready, scored a lead on {database_url.split(':')[0]}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    worker = subprocess.Popen(["leadscore", "worker"], env=env, cwd=workdir)
    time.sleep(3)
    if worker.poll() is not None:
        raise SystemExit(f"leadscore worker exited early with {worker.returncode}")
    worker.send_signal(signal.SIGTERM)
    if worker.wait(timeout=30) != 0:
        raise SystemExit(f"leadscore worker stopped with {worker.returncode} on SIGTERM")
    print("ok: worker started and stopped on SIGTERM")


def postgres_database(server_url: str, venv: Path) -> str | None:
    """A new, empty database on the test server, made with the installed driver."""
    name = f"leadscore_smoke_{os.getpid()}"
    code = (
        "import sys, sqlalchemy as sa\n"
        "e = sa.create_engine(sys.argv[1], isolation_level='AUTOCOMMIT')\n"
        "with e.connect() as c:\n"
        f"    c.execute(sa.text('DROP DATABASE IF EXISTS {name}'))\n"
        f"    c.execute(sa.text('CREATE DATABASE {name}'))\n"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code, server_url], check=False)
    if done.returncode != 0:
        return None
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(server_url: str, name: str, venv: Path) -> None:
    code = (
        "import sys, sqlalchemy as sa\n"
        "e = sa.create_engine(sys.argv[1], isolation_level='AUTOCOMMIT')\n"
        "with e.connect() as c:\n"
        f"    c.execute(sa.text('DROP DATABASE IF EXISTS {name} WITH (FORCE)'))\n"
    )
    subprocess.run([str(venv / "bin" / "python"), "-c", code, server_url], check=False)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="leadscore-smoke-") as tmp:
        venv = Path(tmp) / "venv"
        workdir = Path(tmp) / "run"
        workdir.mkdir()
        install = ["sh", str(ROOT / "deploy" / "install.sh"), str(venv), str(ROOT)]
        if run(install, dict(os.environ), cwd=ROOT).returncode != 0:
            raise SystemExit("deploy/install.sh failed")
        check(f"sqlite:///{workdir / 'leadscore.db'}", venv, workdir)
        server_url = os.environ.get("LEADSCORE_TEST_DATABASE_URL", "")
        if server_url.startswith("postgresql"):
            url = postgres_database(server_url, venv)
            if url is None:
                raise SystemExit(f"cannot create a database on {server_url}")
            try:
                check(url, venv, workdir)
            finally:
                drop_database(server_url, url.rsplit("/", 1)[1], venv)
    print("deploy smoke: passed")


if __name__ == "__main__":
    main()
