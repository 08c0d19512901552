"""Print the OpenAPI description as YAML: ``python -m leadscore_api.openapi > openapi.yaml``.

Generated from the application itself (with no database touched), so the committed file can be
checked against the code by a test.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from leadscore_api.config import BUNDLED_RULES_DIR, Settings


def openapi_document() -> dict[str, Any]:
    from leadscore_api.app import create_app

    settings = Settings(
        _env_file=None,
        database_url="sqlite://",
        rules_dir=BUNDLED_RULES_DIR,
        run_worker=False,
    )
    return create_app(settings).openapi()


def render() -> str:
    return yaml.safe_dump(openapi_document(), sort_keys=False, allow_unicode=True, width=100)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
