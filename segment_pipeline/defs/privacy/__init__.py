"""Privacy: the daily ``deletion_requests`` asset (issue 15)."""
