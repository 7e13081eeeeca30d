"""Exports: the daily segment feed, per-segment chunked exports and CSV by date range."""
