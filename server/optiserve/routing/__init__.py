"""Which models answer a request: the prompt's complexity features, tiers, quality and
budget filters, fallback chains (router.py), prompt compression (compression.py), and the
plan the service follows (planner.py)."""
