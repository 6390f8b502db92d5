"""Launch the Triton server binary shipped in the nvidia-pytriton wheel (explicit model control, loopback only).

The Python backend is assembled from the wheel into a build folder. Two traps handled here: the backend
stub finds the virtualenv only through PATH (the venv's bin must come first), and each server gets its
own shared-memory prefix so stale /dev/shm regions of a crashed server can be removed safely.
"""

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from components.atomic import atomic_path
from components.errors import RecsysError
from components.processes import PidFileError, launch, owned_pid, stop_process, wait_ready, write_pid_file
from serving import triton_admin

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
SHM_BASE = "triton_python_backend_shm_region_"
STUB_PYTHON = "3.11"
PROGRAM = "tritonserver"  # in the server's command line: how a PID file's pid is recognised


class TritonServerError(RecsysError):
    """The Triton server could not be started, reached or stopped."""


@dataclass(frozen=True)
class ServerSettings:
    """Where the server listens and what it serves."""

    model_repository: Path
    build_dir: Path
    host: str = "127.0.0.1"
    http_port: int = 18000
    grpc_port: int = 18001
    metrics_port: int = 18002
    log_file: Path | None = None
    start_timeout_s: float = 60.0

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def shm_prefix(self) -> str:
        return f"{SHM_BASE}recsys_{self.grpc_port}_"


@dataclass
class TritonServer:
    """A running server process."""

    pid: int
    settings: ServerSettings
    process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return self.settings.grpc_url

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_server(self.pid, self.settings, timeout_s=timeout_s, process=self.process)


def settings_from_config(config) -> ServerSettings:
    """ServerSettings from the `serving` config section."""
    s = config.serving
    return ServerSettings(
        model_repository=Path(s.model_repository),
        build_dir=Path(s.triton_build_dir),
        host=s.host,
        http_port=s.triton_http_port,
        grpc_port=s.triton_grpc_port,
        metrics_port=s.triton_metrics_port,
        log_file=Path(s.triton_log_file),
        start_timeout_s=s.triton_start_timeout_s,
    )


def _wheel_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")  # locate only: importing pytriton needs its unused extras
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("nvidia-pytriton is not installed (pip install --no-deps nvidia-pytriton==0.7.0)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonServerError(f"no tritonserver binary in the nvidia-pytriton wheel at {root / 'bin'}")
    return root


def backend_directory(build_dir: str | Path) -> Path:
    """Assemble backends/python (libtriton_python.so, utils, the 3.11 stub) from the wheel into build_dir."""
    wheel = _wheel_dir()
    sources = {
        "libtriton_python.so": wheel / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": wheel / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": wheel / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub",
    }
    backends = Path(build_dir).resolve() / "backends"
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        if not source.is_file():
            raise TritonServerError(f"the nvidia-pytriton wheel lacks {source}")
        dest = target / name
        if not dest.is_file() or dest.stat().st_size != source.stat().st_size:
            with atomic_path(dest) as tmp:
                shutil.copy2(source, tmp)
    return backends


def server_command(settings: ServerSettings) -> tuple[list[str], dict[str, str]]:
    """The tritonserver command line (it holds the admin key: log it only through triton_admin.redact) and
    environment."""
    wheel = _wheel_dir()
    backends = backend_directory(settings.build_dir)
    cmd = [
        str(wheel / "bin" / "tritonserver"),
        f"--model-repository={Path(settings.model_repository).resolve()}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--http-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.host}",
        f"--metrics-port={settings.metrics_port}",
        "--allow-gpu-metrics=false",
        "--strict-readiness=false",
        "--exit-on-error=false",
        "--log-verbose=0",
        f"--backend-config=python,shm-region-prefix-name={settings.shm_prefix}",
        # model control and the other non-inference protocols need the admin key (visible in the process list)
        *triton_admin.server_options(triton_admin.admin_key(settings.build_dir, create=True)),
    ]
    env = dict(os.environ)
    libs = wheel.parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    # the backend stub locates its Python by searching PATH for python3: the venv must come first
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return cmd, env


def clean_shm(settings: ServerSettings) -> int:
    """Remove this server's shared-memory regions (only call when it is not running); returns how many."""
    removed = 0
    for region in SHM_DIR.glob(f"{settings.shm_prefix}*"):
        try:
            region.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d stale Triton shared-memory regions (%s*)", removed, settings.shm_prefix)
    return removed


def _ready(settings: ServerSettings) -> bool:
    import tritonclient.grpc as grpcclient

    try:
        with grpcclient.InferenceServerClient(settings.grpc_url) as client:
            return bool(client.is_server_ready(client_timeout=1.0))
    except Exception:  # noqa: BLE001 - not up yet
        return False


def start_server(settings: ServerSettings, detach: bool = False) -> TritonServer:
    """Start tritonserver (explicit model control) and wait until it is ready.

    detach=True puts it in its own session so it outlives this process (the caller writes a PID file).
    """
    if _ready(settings):
        raise TritonServerError(f"a Triton server already answers at {settings.grpc_url}")
    clean_shm(settings)
    Path(settings.model_repository).mkdir(parents=True, exist_ok=True)
    cmd, env = server_command(settings)
    log_file = settings.log_file or Path(settings.build_dir) / f"triton_{settings.grpc_port}.log"
    process = launch(cmd, log_file, env=env, detach=detach)
    log.info("started tritonserver pid %d (gRPC %s, log %s)", process.pid, settings.grpc_url, log_file)
    log.debug("tritonserver command: %s", " ".join(triton_admin.redact(cmd)))
    try:
        wait_ready("tritonserver", lambda: _ready(settings), process, settings.start_timeout_s, log_file,
                   error=TritonServerError)
    except TritonServerError:
        clean_shm(settings)
        raise
    log.info("tritonserver ready at %s", settings.grpc_url)
    return TritonServer(pid=process.pid, settings=settings, process=process)


def stop_server(
    pid: int, settings: ServerSettings, timeout_s: float = 20.0, process: subprocess.Popen | None = None
) -> None:
    """SIGTERM the server by PID, SIGKILL it after timeout_s, then remove its shared-memory regions."""
    if not stop_process(pid, timeout_s, process=process):
        log.warning("tritonserver pid %d ignored SIGTERM for %.0f s; it was killed", pid, timeout_s)
    time.sleep(0.2)  # backend stubs exit right after their parent
    clean_shm(settings)
    log.info("tritonserver pid %d stopped", pid)


def pid_file(settings: ServerSettings) -> Path:
    return Path(settings.build_dir) / f"triton_{settings.grpc_port}.pid"


def start_detached(settings: ServerSettings) -> TritonServer:
    """Start a server that outlives this process and record its PID file (pid, host, start time)."""
    server = start_server(settings, detach=True)
    write_pid_file(pid_file(settings), server.pid)
    return server


def running_pid(settings: ServerSettings) -> int | None:
    """PID from the PID file if that process is still the server it recorded (not a reuse of its pid)."""
    try:
        return owned_pid(pid_file(settings), PROGRAM)
    except PidFileError as err:
        log.warning("%s", err)
        return None


def stop_detached(settings: ServerSettings, timeout_s: float = 20.0) -> bool:
    """Stop the server named in the PID file; False if none was running.

    Raises PidFileError, stopping nothing, when the pid now belongs to another process."""
    path = pid_file(settings)
    pid = owned_pid(path, PROGRAM)
    if pid is None:
        path.unlink(missing_ok=True)
        clean_shm(settings)
        return False
    stop_server(pid, settings, timeout_s=timeout_s)
    path.unlink(missing_ok=True)
    return True


def is_ready(settings: ServerSettings) -> bool:
    """Whether a server answers ready at the configured gRPC address."""
    return _ready(settings)
