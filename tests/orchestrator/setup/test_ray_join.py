"""Joining a `ray start` head that runs with token authentication: refused in seconds, saying what to set.

The head is a real `ray start --head --block` with ``RAY_AUTH_MODE=token``, in its own temp dir so
that no other test's ``ray.init()`` finds it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.setup.ray_join import ClusterJoinError, check_can_join

RAY = Path(sys.executable).with_name("ray")
CMPNAS = Path(sys.executable).with_name("cmpnas")
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def driver_env(home: Path, **variables: str) -> dict[str, str]:
    """An environment with no Ray authentication settings but ``variables``, and a HOME without a token."""
    env = {name: value for name, value in os.environ.items() if name not in AUTH_VARIABLES}
    return {**env, "HOME": str(home), **variables}


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A Ray head with token authentication; yields (address, token)."""
    folder = tmp_path_factory.mktemp("token-head")
    token, port = secrets.token_hex(32), free_port()
    env = driver_env(folder / "home", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log = folder / "ray-start.log"
    # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes, which pytest's
    # numbered folders (/tmp/pytest-of-<user>/pytest-<n>/...) exceed once n has three digits.
    ray_temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={ray_temp}", "--node-ip-address=127.0.0.1"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            probe = subprocess.run([sys.executable, "-c", f"from orchestrator.setup.ray_join import check_can_join; "
                                    f"check_can_join({address!r})"], env=env, capture_output=True, timeout=60)
            if probe.returncode == 0:
                break
            assert head.poll() is None, f"ray start --head exited: {log.read_text()[-3000:]}"
            time.sleep(1)
        else:
            pytest.fail(f"the token head at {address} never accepted its own token")
        yield address, token
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                # `ray start --block` has never exited on SIGTERM within 30 s here (the suite's slowest
                # teardown): a short grace, then the whole process group is killed, as it was after 30 s.
                head.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_search_without_the_token_mode_fails_in_seconds_naming_what_to_set(token_head, tmp_path):
    address, _ = token_head
    started = time.monotonic()
    result = subprocess.run([str(CMPNAS), "search", "--address", address, "--set", f"output_dir={tmp_path / 'out'}",
                             "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                            env=driver_env(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "ClusterJoinError" in output and "RAY_AUTH_MODE=token" in output and "RAY_AUTH_TOKEN" in output, output
    assert "Traceback" not in output, output
    assert elapsed < 30, f"took {elapsed:.0f} s"  # Ray's own retries take 20-40 s, plus the CLI's imports
    assert not (tmp_path / "out" / "search_state.json").exists()  # a refused start leaves nothing to block the next


def test_each_token_problem_gets_its_own_advice(token_head, tmp_path):
    address, token = token_head
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    cases = {
        "mode token, no token": (driver_env(home, RAY_AUTH_MODE="token"), "no token was found"),
        "mode token, wrong token": (driver_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
                                    "is not the head's"),
        "token file, mode unset": (None, "the token found in"),
    }
    for case, (env, advice) in cases.items():
        if env is None:
            (home / ".ray" / "auth_token").write_text(token)
            env = driver_env(home)
        result = subprocess.run([sys.executable, "-c", f"from orchestrator.setup.ray_join import check_can_join; "
                                 f"check_can_join({address!r})"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "ClusterJoinError" in result.stderr, (case, result.stderr)
        assert advice in result.stderr, (case, result.stderr)


def test_the_right_token_joins(token_head, tmp_path):
    address, token = token_head
    env = driver_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    code = (f"import ray; from orchestrator.setup.ray_join import check_can_join; check_can_join({address!r}); "
            f"ray.init(address={address!r}, include_dashboard=False, configure_logging=False, log_to_driver=False); "
            "print(int(ray.cluster_resources()['CPU']))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "1"


def test_an_address_where_nothing_listens_is_refused_at_once():
    started = time.monotonic()
    with pytest.raises(ClusterJoinError, match="nothing accepts connections"):
        check_can_join(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 10
