"""What an alert says, and how it reaches Slack, for the DAGs and the cron scripts alike.

* :func:`redact_text` / :func:`error_summary`: the one-line, secret-free summary of an error;
* :func:`send`: posts a text through a Slack incoming-webhook client (``slack_sdk``'s
  ``WebhookClient``, the one the Slack provider's hook holds), and says when Slack refused it.

The Airflow side (:mod:`pg_backups.airflow.notifiers`) hands these its hook's client and adds
Airflow's own secret masker; the cron command builds the client from ``SLACK_WEBHOOK_URL``.
Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import os
import re

from pg_backups import runner

log = logging.getLogger(__name__)

ERROR_SUMMARY_CHARS = 400
SLACK_TIMEOUT_SECONDS = 10
_URL_USERINFO = re.compile(r"(\w+://)[^/\s:@]+(?::[^/\s@]*)?@")
_SECRET_ASSIGNMENT = re.compile(r"(?i)\b([\w-]*(?:password|passwd|secret|token|key-secret|api[_-]?key)[\w-]*)"
                                r"(\s*[=:]\s*)([^\s,;'\"]+)")
_SLACK_WEBHOOK_PATH = re.compile(r"(hooks\.slack\.com/services/|/services/)[A-Za-z0-9/_-]+")


def redact_text(text: str) -> str:
    """Text safe for Slack: environment secrets, URL credentials, key=value secrets, webhook paths."""
    text = runner.redact(text, runner.secrets_of(dict(os.environ)))
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _SECRET_ASSIGNMENT.sub(r"\1\2***", text)
    return _SLACK_WEBHOOK_PATH.sub(r"\1***", text)


def error_summary(exception, limit: int = ERROR_SUMMARY_CHARS, mask=None) -> str:
    """``Type: first line of the message``, redacted and cut to ``limit`` characters.

    ``mask``: a further redaction applied first (Airflow's secret masker, inside a task).
    """
    if exception is None:
        return "no exception recorded (killed, timed out or marked failed): see the log"
    if isinstance(exception, BaseException):
        message = str(exception).strip()
        name = type(exception).__name__
        first = message.splitlines()[0] if message else ""
        text = f"{name}: {first}" if first else name
    else:
        text = str(exception).strip().splitlines()[0] if str(exception).strip() else "see the log"
    if mask is not None:
        text = mask(text)
    text = redact_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def send(client, text: str) -> None:
    """Post ``text`` through a ``slack_sdk`` webhook client; raise when Slack did not take it."""
    response = client.send(text=text)
    if getattr(response, "status_code", 200) != 200:
        raise ConnectionError(f"Slack answered {response.status_code}: {str(getattr(response, 'body', ''))[:200]}")


def webhook_client(url: str):
    """A webhook client for a URL given outside Airflow (the cron scripts' SLACK_WEBHOOK_URL)."""
    from slack_sdk.webhook import WebhookClient

    return WebhookClient(url, timeout=SLACK_TIMEOUT_SECONDS)
