"""Which process is which (a pid plus its start time and host, so a recycled pid is never mistaken for ours), and
the managed server processes built on it: launched with a log, waited on until ready, stopped by pid.

A pid alone names whatever process holds that number now; after the process we started has exited, the
kernel may give the number to any other process. The start time (field 22 of /proc/<pid>/stat, in clock
ticks since boot) tells the two apart. PID files and the retraining lock record both.
"""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.atomic import write_atomic
from components.errors import RecsysError


class PidFileError(RecsysError):
    """A PID file names a process that is not the one it recorded; nothing was stopped."""


class ServerStartError(RecsysError):
    """A server process exited, reported a failure or did not become ready in time (it was stopped)."""


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if it is gone."""
    try:
        # the command name (field 2) may hold spaces and parentheses: count fields after its closing ")"
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def command_line(pid: int) -> str:
    """The process's command line ('' when it is gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, told apart from any later holder of its pid."""

    pid: int
    host: str
    start_ticks: int | None

    @classmethod
    def of(cls, pid: int) -> "ProcessIdentity":
        """The identity of a process on this host, now."""
        return cls(pid, socket.gethostname(), start_ticks(pid))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProcessIdentity":
        ticks = data.get("start_ticks")
        return cls(int(data["pid"]), str(data.get("host") or socket.gethostname()),
                   None if ticks is None else int(ticks))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """Whether this very process still runs; None when it runs on another host (this one cannot tell)."""
        if not self.local:
            return None
        if not pid_alive(self.pid):
            return False
        return self.start_ticks is None or start_ticks(self.pid) == self.start_ticks


def write_pid_file(path: str | Path, pid: int) -> Path:
    """Record a server we started: pid, host and start time (JSON), written atomically."""
    return write_atomic(path, json.dumps(ProcessIdentity.of(pid).to_dict()))


def read_pid_file(path: str | Path) -> ProcessIdentity | None:
    """The identity a PID file records (a bare pid from older files has no start time); None if there is none."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return ProcessIdentity.from_dict(data if isinstance(data, dict) else {"pid": data})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise PidFileError(f"PID file {path} is unreadable ({err}); remove it if the server is gone") from err


def owned_pid(path: str | Path, program: str) -> int | None:
    """The pid of the running server a PID file records; None when that server is gone (stale file removed).

    Raises PidFileError (nothing stopped, the stale file removed) when the pid now belongs to another process:
    its start time differs from the recorded one, or its command line does not mention `program`."""
    record = read_pid_file(path)
    if record is None:
        return None
    if not pid_alive(record.pid):
        Path(path).unlink(missing_ok=True)
        return None
    now_ticks, cmd = start_ticks(record.pid), command_line(record.pid)
    if record.start_ticks is not None and now_ticks != record.start_ticks:
        why = f"it started at tick {now_ticks}, the recorded server at tick {record.start_ticks}"
    elif program not in cmd:
        why = f"its command line does not mention {program}"
    else:
        return record.pid
    Path(path).unlink(missing_ok=True)
    raise PidFileError(f"refusing to stop pid {record.pid} named in {path}: it is no longer the server that was "
                       f"started ({why}; now running: {cmd[:120] or '?'}); nothing was stopped and the "
                       f"stale PID file was removed")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for servers started on loopback by tests, simulations, benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# ---- managed server processes: launched with a log, waited on until ready, stopped by pid ------------------
def http_status(url: str, timeout: float = 1.0) -> int:
    """The HTTP status of a GET to `url` (0 when nothing answers): the readiness probe of HTTP servers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs of our servers
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return 0


def launch(cmd: list[str], log_path: str | Path, env: dict[str, str] | None = None, cwd: str | Path | None = None,
           detach: bool = False) -> subprocess.Popen:
    """Start a server with stdout and stderr appended to `log_path` (its folder created) and no stdin.

    detach=True puts it in a session of its own, so it outlives this process (the caller writes its PID file)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=detach)


def wait_ready(what: str, ready: Callable[[], bool], process: subprocess.Popen, timeout_s: float, log_path: str | Path,
               failure: Callable[[], str | None] | None = None, error: type[RecsysError] = ServerStartError) -> None:
    """Poll `ready` until it holds. Raises `error` naming `what` and its log when the process exits first, when
    `failure` reports an error (the process is stopped) or after `timeout_s` (the process is stopped)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise error(f"{what} exited with code {process.returncode} before it was ready; see {log_path}")
        why = failure() if failure is not None else None
        if why:
            stop_process(process.pid, process=process)
            raise error(f"{what} could not start: {why} (log {log_path})")
        if time.monotonic() > deadline:
            stop_process(process.pid, process=process)
            raise error(f"{what} was not ready within {timeout_s:.0f} s; see {log_path}")
        time.sleep(0.2)


def stop_process(pid: int, timeout_s: float = 20.0, process: subprocess.Popen | None = None) -> bool:
    """SIGTERM the process (a server's workers follow it), SIGKILL it after `timeout_s`, reap it when it is our
    child. Returns False when it had to be killed."""
    if not pid_alive(pid):
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    graceful = True
    while (process.poll() is None) if process is not None else pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            graceful = False
            break
        time.sleep(0.05)
    if process is not None:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    else:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return graceful
