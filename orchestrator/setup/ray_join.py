"""Checks made before joining a Ray cluster, so that a wrong address or a missing token fails in seconds.

Ray's own connect retries for 20-40 s and then raises a bare ``ConnectionError`` (after printing
a warning per retry). The two causes a new user meets are told apart here first:

* nothing listens at ``ray.address`` (a TCP connect within ``CONNECT_TIMEOUT_S``): the head is
  not started, or the host or port is wrong;
* the head runs with token authentication (``RAY_AUTH_MODE=token`` when it was started) and this
  driver does not send its token. With the pinned Ray a driver joining ``HOST:PORT`` sends a token
  only when ``RAY_AUTH_MODE=token`` is set in its environment, and reads the token from
  ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. (For
  ``address: auto`` Ray turns token mode on by itself when a token is found.) Ray's GCS answers an
  unauthenticated request at once, so one request tells.

``ray://`` addresses go through the Ray Client server, which Ray checks itself; they are not probed.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from search_space.errors import CmpnasError

# Seconds to wait for the head's port to accept a connection, and for its GCS to answer.
CONNECT_TIMEOUT_S = 5.0
AUTH_PROBE_TIMEOUT_S = 10.0
TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")


NO_TOKEN_ADVICE = ("RAY_AUTH_MODE=token is set but no token was found: set RAY_AUTH_TOKEN=<token> or "
                   "RAY_AUTH_TOKEN_PATH=<file>, or copy the head's ~/.ray/auth_token (`ray get-auth-token` on the "
                   "head prints it). See docs/deploy.md")


class ClusterJoinError(CmpnasError, RuntimeError):
    """The Ray cluster at ``ray.address`` cannot be joined: unreachable, or refusing this driver's token."""


def token_source() -> str | None:
    """Where Ray would read this driver's token from, or None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if Path(path).expanduser().is_file() else None
    default = DEFAULT_TOKEN_FILE.expanduser()
    return str(default) if default.is_file() else None


def token_mode_on() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"


def check_can_join(address: str) -> None:
    """Refuse ``address`` (``ray.address``) in seconds when no Ray head listens there or it refuses
    this driver's authentication; the error says what to set. Anything else is left to ``ray.init``."""
    if address.startswith("ray://"):
        return
    gcs_address = _gcs_address(address)
    if gcs_address is None:
        return  # `auto` with no cluster recorded on this machine: ray.init says so itself
    host, _, port = gcs_address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise ClusterJoinError(
            f"ray.address={address!r}: nothing accepts connections at {gcs_address} ({error}). Start the head "
            "there (`ray start --head --port PORT`), or set ray.address (--address) to the address `ray start` "
            "printed"
        ) from None
    if address == "auto" and token_source() is not None:
        return  # Ray turns token mode on by itself for `auto` when it finds a token
    if token_mode_on() and token_source() is None:
        # Ray's token loader aborts the process in this state: say so before any Ray client exists.
        raise ClusterJoinError(f"ray.address={address!r}: {NO_TOKEN_ADVICE}")
    refusal = _authentication_refusal(gcs_address)
    if refusal is not None:
        raise ClusterJoinError(_auth_advice(address, refusal))


def _gcs_address(address: str) -> str | None:
    """The address ``ray.init`` will connect to: ``auto`` resolved, localhost as the node's IP."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001 - no recorded cluster for `auto`, or a malformed address: ray.init reports it
        return None if address == "auto" else address


def _authentication_refusal(gcs_address: str) -> str | None:
    """Ray's message when the GCS at ``gcs_address`` refuses this process's credentials, else None.

    The request runs in a thread: a port that accepts connections but is not a GCS would keep Ray's
    client retrying for 40 s, and then ``ray.init`` is left to report it."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            GcsClient(address=gcs_address)
            outcome.append(None)
        except AuthenticationError as error:
            outcome.append(error.message)
        except Exception:  # noqa: BLE001 - not an authentication matter: ray.init reports it
            outcome.append(None)

    thread = threading.Thread(target=probe, name="cmpnas-ray-auth-probe", daemon=True)
    thread.start()
    thread.join(AUTH_PROBE_TIMEOUT_S)
    return outcome[0] if outcome else None


def _auth_advice(address: str, refusal: str) -> str:
    head = f"ray.address={address!r}: the Ray head refused this driver ({refusal.split('.')[0]}). "
    source = token_source()
    if not token_mode_on():
        where = (f"the token found in {source} is then sent" if source else
                 "and give this machine the head's token: RAY_AUTH_TOKEN=<token>, or RAY_AUTH_TOKEN_PATH=<file>, or "
                 "the file ~/.ray/auth_token (`ray get-auth-token` on the head prints it)")
        return (head + "The head runs with token authentication and RAY_AUTH_MODE is not 'token' in this "
                f"driver's environment: set RAY_AUTH_MODE=token, {where}. See docs/deploy.md")
    return (head + f"The token read from {source} is not the head's: use the token the head was started with "
            "(`ray get-auth-token` on the head prints it). See docs/deploy.md")
