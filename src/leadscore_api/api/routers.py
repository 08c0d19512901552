"""Every router of the HTTP API, in the order the OpenAPI document lists them."""

from __future__ import annotations

from fastapi import APIRouter

from leadscore_api.api import (
    api_keys,
    backtest,
    challenger,
    costs,
    crm,
    dashboard,
    deliveries,
    events,
    health,
    jobs,
    leads,
    reports,
    reps,
    rulesets,
    spreadsheets,
    subscriptions,
    webhooks,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    events.router,
    # Before leads: /v1/leads/export is not the lead with id "export".
    spreadsheets.router,
    leads.router,
    rulesets.router,
    challenger.router,
    backtest.router,
    jobs.router,
    api_keys.router,
    webhooks.router,
    subscriptions.router,
    deliveries.router,
    crm.router,
    reps.router,
    reports.router,
    costs.router,
    dashboard.router,
)
