"""Service layer: what the HTTP routes (and the webhook adapters) do, in plain functions."""
