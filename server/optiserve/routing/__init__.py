"""Which model answers: the catalogue of models, routing, budgets and usage accounting."""
