"""A plugin whose import fails: the loader must never import it when it is disabled."""

raise RuntimeError("tests.sample_plugins.exploding was imported")
