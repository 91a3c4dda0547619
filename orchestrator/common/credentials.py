"""Credentials in URIs stay in the process: every copy that is stored, logged or printed is redacted.

A tracking URI such as ``https://user:secret@mlflow.example`` or a storage path such as
``postgresql://cmpnas:secret@db/mlflow?sslpassword=...`` works as configured, but
``search_state.json``, ``config.json``, the parent run's params, the logs and the terminal get
``https://mlflow.example``: the user-info part of a URI, and the query parameters that name
secrets (``SECRET_QUERY_KEYS``), are removed. (Removed rather than masked: a recorded URI is used
again by a resume or ``cmpnas sync``, and a masked user name would be sent as one.)

Credentials belong in the environment, where MLflow, Ray and fsspec read them
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``): a resume or ``cmpnas sync`` then works from the
recorded (redacted) URI. A search started with credentials in the URI must be given the URI again
on resume (``--set tracking.uri=...``) or through those variables.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token",
                               "api_key", "apikey", "key", "access_key", "secret_key", "aws_secret_access_key",
                               "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token"})
# A URI with a scheme (``scheme://``) anywhere in a longer text, such as an error message.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")


def redact_uri(uri: str) -> str:
    """``uri`` without its user-info part and secret query parameters; any other text unchanged."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in SECRET_QUERY_KEYS for name, _ in pairs):
            query = urlencode([(name, value) for name, value in pairs if name.lower() not in SECRET_QUERY_KEYS])
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URI found in ``text`` (a log line, an error message) redacted."""
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)


def redact_tree(tree: Any) -> Any:
    """A configuration tree (dicts, lists, strings) with every URI in it redacted; the input is not changed."""
    if isinstance(tree, dict):
        return {key: redact_tree(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [redact_tree(value) for value in tree]
    if isinstance(tree, str):
        return redact_uri(tree)
    return tree


def fields_with_credentials(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted fields of a configuration tree whose value holds credentials."""
    found = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found += fields_with_credentials(value, f"{name}.")
        elif redact_tree(value) != value:
            found.append(name)
    return found
