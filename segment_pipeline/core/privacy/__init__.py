"""Privacy by construction (issue 15): suppression lists, consent gates and retention; deletion requests
(the ledger, ``forget``), tombstones, and the scrubbing of files."""
