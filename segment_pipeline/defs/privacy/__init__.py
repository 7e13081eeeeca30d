"""Privacy: suppression lists (loaded daily), consent gates (applied by every export and sync), retention."""
