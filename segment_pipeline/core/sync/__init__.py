"""Incremental, crash-safe sync of segment memberships to email platforms (no Dagster here)."""
