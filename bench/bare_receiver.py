"""The baseline: a receiver in the style of AgentMail's webhook guide.

It verifies the Svix signature, parses the JSON and answers 200, storing nothing: the
fastest a Flask receiver on waitress gets on this machine. The runner's ingest is
measured against it on the same server settings (32 threads, each response sent in one
write, as `serve` sends them) and the same load generator.

With ``--no-flask`` the same work is done by a plain WSGI function, as `serve` answers
``POST /webhook`` in front of Flask's dispatch: against that, the runner's rate shows
what the durable store alone costs.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from svix.webhooks import Webhook, WebhookVerificationError
from waitress import serve
from werkzeug.datastructures import EnvironHeaders
from werkzeug.wsgi import get_input_stream

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


def without_flask(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``POST /webhook`` answered before Flask's dispatch; the rest through Flask."""
    if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != "/webhook":
        return app(environ, start_response)
    body = get_input_stream(environ).read()
    try:
        hook.verify(body, dict(EnvironHeaders(environ)))
    except WebhookVerificationError:
        start_response("401 Unauthorized", [("Content-Length", "17")])
        return [b"invalid signature"]
    json.loads(body)
    start_response("200 OK", [("Content-Length", "0")])
    return [b""]


if __name__ == "__main__":
    warnings.filterwarnings("ignore", "send_bytes", DeprecationWarning)
    serve(
        without_flask if "--no-flask" in sys.argv else app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        threads=32,
        send_bytes=18000,
        _quiet=True,
    )
