"""Start a ``vllm serve`` process with a hasten policy, wait until it answers, stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from hasten.serve.serve_cli import ServeConfig, resolve_model, vllm_command


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server for one :class:`ServeConfig`, as a context manager.

    Its output goes to ``log_path``. Entering waits for ``/health`` (at most
    ``startup_timeout`` seconds) and fails with the log's tail if the server dies first;
    leaving stops the server's process group (SIGINT, then SIGKILL after ``stop_timeout``).
    """

    def __init__(
        self,
        cfg: ServeConfig,
        log_path: Path,
        *,
        cuda: bool = False,
        startup_timeout: float = 600.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.log_path = Path(log_path)
        self.cuda = cuda
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def __enter__(self) -> ServerProcess:
        argv, env = vllm_command(self.cfg, resolve_model(self.cfg.model), cuda=self.cuda)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        t0 = time.monotonic()
        # Its own session, so stopping it reaches vLLM's engine and worker processes too.
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self, t0: float) -> None:
        url = self.cfg.url + "/health"
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the {self.cfg.policy} server exited with code {self.proc.returncode} "
                    f"before it answered; the end of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"the {self.cfg.policy} server did not answer {url} within "
            f"{self.startup_timeout:g} s; the end of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            self._signal(signal.SIGINT)
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Also when interrupted while waiting: never leave a server behind.
            if proc.poll() is None:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=30)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
