"""Tests of the built-in plugins, each through the full runner."""
