"""Credentials in URIs stay in the process: every copy that is stored, logged or printed is redacted.

A tracking URI such as ``https://user:secret@mlflow.example`` or a storage path such as
``postgresql://cmpnas:secret@db/mlflow?sslpassword=...`` works as configured, but
``search_state.json``, ``config.json``, the parent run's params, the logs and the terminal get
``https://mlflow.example``: the user-info part of a URI, and the query parameters that name
secrets (``SECRET_QUERY_KEYS``), are removed. (Removed rather than masked: a recorded URI is used
again by a resume or ``cmpnas sync``, and a masked user name would be sent as one.)

Redaction fails closed: a URI that cannot be parsed is replaced whole (``UNPARSEABLE_URI``); in a
text (a log line, an error message) the user-info of any ``scheme://user:pass@`` is removed
whatever characters the password holds (quotes, parentheses, ``@``), and so is a
scheme-less ``user:pass@host``; every secret of a URI this process redacted once (its user-info
and secret query values) is replaced wherever it appears again (``SECRET_MASK``), so a password
that reaches a message in another form (with a space, cut, percent-decoded) is still caught; the
configuration loader redacts every loaded tree once for that reason. Texts are redacted first and cut after
(``redacted_excerpt``): a cut URI would hide the ``@`` redaction looks for. Log records are
redacted by ``orchestrator.common.log_redaction``.

Credentials belong in the environment, where MLflow, Ray and fsspec read them
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``): a resume or ``cmpnas sync`` then works from the
recorded (redacted) URI. A search started with credentials in the URI must be given the URI again
on resume (``--set tracking.uri=...``) or through those variables.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token",
                               "api_key", "apikey", "key", "access_key", "secret_key", "aws_secret_access_key",
                               "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token"})
# What a URI that cannot be parsed is replaced with (its scheme kept): it may hold credentials.
UNPARSEABLE_URI = "<URI redacted: it could not be parsed>"
# What a known secret is replaced with where it appears outside a URI.
SECRET_MASK = "***"
# Secrets shorter than this are not masked in free text: they would mask ordinary words.
MIN_MASKED_SECRET = 4
# User-info without a password is remembered as a secret from this length on (an access token).
TOKEN_LENGTH = 16
# A URI with a scheme (``scheme://``) anywhere in a longer text, such as an error message.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
# The user-info after ``scheme://``: anything but white space up to the last ``@`` before the host
# (no ``/``, ``?`` or ``#`` on the way). A password with a space is caught as a known secret.
_USERINFO_AFTER_SCHEME = re.compile(r"(?<=://)[^/?#\s@]*(?:@[^/?#\s@]*)*@(?=[\w\[])")
# ``user:password@host`` without a scheme (a DSN in a message, an ssh-like address).
_USERINFO_WITHOUT_SCHEME = re.compile(r"(?<![\w/.@:%+\-])[\w.%+\-~]+:[^\s/@]+@(?=[\w\[])")
_known_secrets: set[str] = set()
_known_secrets_lock = threading.Lock()


def _remember(*secrets: str) -> None:
    with _known_secrets_lock:
        for secret in secrets:
            for form in (secret, unquote(secret)):
                if len(form) >= MIN_MASKED_SECRET:
                    _known_secrets.add(form)


def redact_uri(uri: str) -> str:
    """``uri`` without its user-info part and secret query parameters; any other text unchanged. A URI
    that cannot be parsed is replaced whole (fails closed); the secrets removed are remembered."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
        pairs = parse_qsl(parts.query, keep_blank_values=True) if parts.query else []
    except ValueError:
        return f"{uri.partition('://')[0]}://{UNPARSEABLE_URI}"
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        # A bare user name (``cmpnas@host``) is no secret, and masking it would garble every line that
        # names it; user-info without a colon long enough to be a token (``TOKEN@host``) is one.
        _remember(*((userinfo, password) if colon else (user,) if len(user) >= TOKEN_LENGTH else ()))
    if any(name.lower() in SECRET_QUERY_KEYS for name, _ in pairs):
        _remember(*(value for name, value in pairs if name.lower() in SECRET_QUERY_KEYS))
        query = urlencode([(name, value) for name, value in pairs if name.lower() not in SECRET_QUERY_KEYS])
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` (a log line, an error message) with every URI redacted, every ``user:password@`` removed
    and every secret this process redacted before masked (the module's rules)."""
    text = _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)
    text = _USERINFO_AFTER_SCHEME.sub("", text)
    text = _USERINFO_WITHOUT_SCHEME.sub("", text)
    with _known_secrets_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, SECRET_MASK)
    return text


def redacted_excerpt(text: str, limit: int = 300) -> str:
    """The first line of ``text``, redacted, then cut to ``limit`` characters (in that order: a URI cut
    before its ``@`` would no longer look like one with credentials)."""
    lines = str(text).splitlines()
    return redact_text(lines[0] if lines else "")[:limit]


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
