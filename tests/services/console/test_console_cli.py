"""`posttrain console` starts the console process with its options as settings, and the
process refuses a cookie secret too short to sign with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from posttrain.stack.services import free_port

BIN = Path(sys.executable).parent


def test_posttrain_console_serves_the_sign_in_page_on_the_port_given(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_CONSOLE_")}
    proc = subprocess.Popen(
        [str(BIN / "posttrain"), "console", "--port", str(port), "--registry", "127.0.0.1:1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        page = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not page:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as r:
                    page = r.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.3)
        assert 'name="api_key"' in page and "Sign in" in page
        # The key is checked with the registry given (nothing listens there): said so.
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/login", data=b"api_key=pt_abcd_0123456789abcdef0123"
        )
        try:
            urllib.request.urlopen(request, timeout=30)
            raise AssertionError("signed in without a registry")
        except urllib.error.HTTPError as error:
            assert error.code == 502 and "could not check the key: UNAVAILABLE" in (
                error.read().decode()
            )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert f"posttrain console on http://127.0.0.1:{port}" in output


def test_a_short_cookie_secret_is_refused():
    env = {**os.environ, "POSTTRAIN_CONSOLE_SECRET_KEY": "short"}
    done = subprocess.run(
        [sys.executable, "-m", "services.console"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert b"POSTTRAIN_CONSOLE_SECRET_KEY must be at least 16 characters" in done.stderr
