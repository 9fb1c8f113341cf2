"""Helpers for testing the runner and its plugins: loopback doubles of its APIs."""
