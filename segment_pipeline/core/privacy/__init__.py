"""Privacy by construction: suppression lists, consent gates, retention (issue 15)."""
