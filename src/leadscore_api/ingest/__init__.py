"""Ingestion: the canonical event model and the platform adapters that produce it."""
