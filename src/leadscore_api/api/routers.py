"""Every router of the HTTP API, in the order the OpenAPI document lists them."""

from __future__ import annotations

from fastapi import APIRouter

from leadscore_api.api import (
    api_keys,
    costs,
    deliveries,
    events,
    health,
    leads,
    reports,
    reps,
    rulesets,
    subscriptions,
    webhooks,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    events.router,
    leads.router,
    rulesets.router,
    api_keys.router,
    webhooks.router,
    subscriptions.router,
    deliveries.router,
    reps.router,
    reports.router,
    costs.router,
)
