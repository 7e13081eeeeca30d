"""Per-integration sync assets (Klaviyo, dotdigital) and their schedules."""
