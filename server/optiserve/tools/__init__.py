"""Build-time helpers (tiny and demo models, guard training); never imported when serving."""
