"""Simulated device profiles."""
