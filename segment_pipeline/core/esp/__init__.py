"""Clients for email service platforms (no Dagster here)."""
