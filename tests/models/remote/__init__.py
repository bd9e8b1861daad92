"""Tests of the remote provider backends against the mock provider (tests/providers)."""
