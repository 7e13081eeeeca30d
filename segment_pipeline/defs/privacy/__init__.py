"""Privacy: suppression lists (loaded daily), consent gates (applied by every export and sync), retention,
and deletion requests (the daily ``deletion_requests`` asset, then the destinations' erasure)."""
