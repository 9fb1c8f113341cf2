"""The built-in plugins. Each subpackage is registered through the ``agentmail_runner``
entry-point group and uses only the public plugin interface of ``runner``."""
