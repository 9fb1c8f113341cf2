"""The baseline: a receiver in the style of AgentMail's webhook guide.

It verifies the Svix signature, parses the JSON and answers 200, storing nothing: the
fastest a Flask receiver on waitress gets on this machine. The runner's ingest is
measured against it on the same server settings (32 threads, each response sent in one
write, as `serve` sends them) and the same load generator.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from flask import Flask, request
from svix.webhooks import Webhook, WebhookVerificationError
from waitress import serve

app = Flask(__name__)
hook = Webhook(os.environ["AGENTMAIL_WEBHOOK_SECRET"])


@app.post("/webhook")
def webhook() -> tuple[str, int]:
    body = request.get_data()
    try:
        hook.verify(body, dict(request.headers))
    except WebhookVerificationError:
        return "invalid signature", 401
    json.loads(body)
    return "", 200


@app.get("/healthz")
def healthz() -> str:
    return "ok"


if __name__ == "__main__":
    warnings.filterwarnings("ignore", "send_bytes", DeprecationWarning)
    serve(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        threads=32,
        send_bytes=18000,
        _quiet=True,
    )
