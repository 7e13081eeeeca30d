"""The daily propagation of deletion requests to the destinations (issue 15, part 3)."""
