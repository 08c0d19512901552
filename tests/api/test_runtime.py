"""``leadscore serve`` hides start-up objects from the garbage collector; other apps do not."""

from __future__ import annotations

import gc

from fastapi import FastAPI
from fastapi.testclient import TestClient

from leadscore_api.cli.serve import served_app
from leadscore_api.config import Settings
from leadscore_api.runtime import YOUNG_GENERATION_THRESHOLD
from leadscore_api.storage.migrate import upgrade_database

from .helpers import event


def test_served_app_freezes_startup_objects_while_running(settings: Settings) -> None:
    upgrade_database(settings.database_url)
    assert gc.get_freeze_count() == 0
    defaults = gc.get_threshold()
    app = served_app(settings)
    headers = {"Authorization": f"Bearer {settings.admin_api_key}"}
    with TestClient(app, headers=headers) as client:
        assert gc.get_freeze_count() > 0
        # The youngest generation is collected far less often while serving.
        assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD > defaults[0]
        assert client.post("/v1/events", json=event()).json()["results"][0]["status"] == "accepted"
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == defaults


def test_create_app_leaves_the_collector_alone(client: TestClient, app: FastAPI) -> None:
    assert app.state.started
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] != YOUNG_GENERATION_THRESHOLD
