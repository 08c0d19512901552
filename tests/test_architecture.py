"""The layer contracts of ``.importlinter`` hold, and breaking one fails the build.

The second test copies the package, adds one forbidden import, and checks that the same
contracts then fail: a contract file that silently matched nothing would pass the first test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "leadscore_api"
CONFIG = ROOT / ".importlinter"


def lint_imports(source_root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` against the package found under ``source_root``."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--config",
            str(CONFIG),
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=source_root,
        check=False,
        timeout=120,
    )


def test_the_code_keeps_every_contract() -> None:
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("scoring/model.py", "import sqlalchemy", "Pure core"),
        ("ingest/sources/form.py", "import leadscore_api.config", "Pure core"),
        ("storage/db.py", "import leadscore_api.service.leads", "No module imports a layer above"),
        ("service/delivery.py", "import leadscore_api.api.routers", "No module imports a layer"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    copy = tmp_path / "leadscore_api"
    shutil.copytree(PACKAGE, copy, symlinks=True)
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), result.stdout
