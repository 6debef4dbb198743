"""The service as production runs it: uvicorn in its own process group, on a free port.

For the drills that need a real process (one that can be SIGKILLed mid-request, or that
has its own pool and workers): :class:`ServiceProcess` starts ``uvicorn app.main:create_app``
with the settings given as environment variables, waits until ``/health/ready`` answers,
and stops it -- SIGTERM to the whole group, SIGKILL if it lingers -- or kills it outright
(:meth:`ServiceProcess.kill`). Its output goes to a file the drills print on failure.
Nothing is ever left running: :meth:`ServiceProcess.stop` is safe to call at any time and
more than once, and the fixtures that start one call it in their finalizers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

MOCKSERVER_URL = os.environ.get("BANK_API_URL") or "http://127.0.0.1:1080"
"""The local stack's MockServer (the bank the drills talk to)."""

READY_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One uvicorn process (and its workers) of the service, started and stopped by a test."""

    def __init__(self, env: Mapping[str, str], *, workers: int = 1, name: str = "service") -> None:
        """Nothing starts yet; ``env`` is added to the current environment (a value of ""
        removes the variable)."""
        self._env = dict(env)
        self._workers = workers
        self._name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The uvicorn process's id (also its process group's) while it runs."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start uvicorn and wait until ``/health/ready`` answers 200 (fails after a minute)."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"{self._name} is already running")
        env = {**os.environ}
        for name, value in self._env.items():
            if value == "":
                env.pop(name, None)
            else:
                env[name] = value
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self._workers),
            "--no-access-log",
        ]
        with self._log_file.open("ab") as log:
            log.write(f"\n----- start {time.strftime('%H:%M:%S')} -----\n".encode())
            log.flush()
            # A session of its own: the group (uvicorn and its workers) is killed as one.
            self._proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.base_url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self._proc is not None
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self._name} did not become ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (no shutdown, no flush) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)
        self._wait_group_gone(proc.pid)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the group (uvicorn drains its workers), SIGKILL it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
        # Workers the parent did not take down with it.
        self._signal_group(proc, signal.SIGKILL)
        self._wait_group_gone(proc.pid)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    @staticmethod
    def _wait_group_gone(pgid: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            except PermissionError:  # pragma: no cover - a group we cannot signal is not ours
                return
            time.sleep(0.05)

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the process's output (all its starts), for failure messages."""
        try:
            return self._log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_tail(chars=10**9)

    def discard_log(self) -> None:
        """Delete the output file (call once the process is stopped)."""
        self._log_file.unlink(missing_ok=True)


def service_env(database_url: str, **settings: object) -> dict[str, str]:
    """The environment of a drill's service: test profile, the test database, tracing and
    metrics off, Kafka off unless given; ``settings`` are extra variables (upper-cased)."""
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "INFO",
        "DD_TRACE_ENABLED": "false",
        "METRICS_ENABLED": "false",
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "BANK_API_URL": MOCKSERVER_URL,
    }
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return env


@contextlib.contextmanager
def running_service(env: Mapping[str, str], *, workers: int, name: str) -> Iterator[ServiceProcess]:
    """The service started for the block and always stopped (its log discarded)."""
    process = ServiceProcess(env, workers=workers, name=name)
    try:
        process.start()
        yield process
    finally:
        process.stop()
        process.discard_log()
