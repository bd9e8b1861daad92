"""Which model answers a request: complexity features, tiers, budgets and fallback chains.

Empty until the router lands (remote providers); the catalogue's name lookup lives in
:mod:`optiserve.models.catalogue`.
"""
