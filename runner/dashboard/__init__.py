"""The operator's dashboard, served by the runner under ``/dashboard``.

Its pages live in ``runner.dashboard.views``, registered by the web app only when an
admin token is configured (``[runner] admin_token`` or
``AGENTMAIL_RUNNER_ADMIN_TOKEN``); they answer loopback clients only unless
``dashboard_allow_remote`` is set. See docs/dashboard.md.
"""
