"""Plugin modules that the loader tests reach through entry points."""
