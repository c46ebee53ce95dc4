"""Shared test fixtures. Fixtures that start real services live in tests/support/."""
