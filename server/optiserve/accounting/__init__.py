"""Accounting of what was served: usage counters (the ledger and budgets join here).

Imports ``domain`` only.
"""
