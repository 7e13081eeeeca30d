"""Privacy: deletion requests (the ledger, ``forget``), tombstones, and the scrubbing of files."""
