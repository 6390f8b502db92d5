"""The BentoML recommendation API as a managed process on loopback (the Triton launcher is serving/triton_server.py).

`start_api(config)` is the one launcher (CLI, demo, simulation, tests and benchmarks call it): it writes the resolved
config to a file, runs `bentoml serve serving.service:RecommendationService` with $RECSYS_CONFIG pointing at it,
waits for /healthz and returns the PID (a PID file records detached servers). Every route but the probes needs a
bearer token (serving/auth.py): the first start creates an admin key and writes its token to a 0600 file beside the
keys file, which the local clients (demo, simulation, benchmark, sample curl) read, unless $RECSYS_API_TOKEN is set.
"""

import json
import logging
import os
import shlex
import sys
from pathlib import Path

from components.config import CONFIG_ENV, Config, absolute_paths, write_config
from components.errors import RecsysError
from components.processes import http_status, launch, owned_pid, stop_process, wait_ready, write_pid_file
from serving.auth import SCOPES, create_key, write_token_file

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:RecommendationService"
TOKEN_ENV = "RECSYS_API_TOKEN"  # the bearer token local clients send (default: the first start's token file)
PROMETHEUS_DIRS = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")


class ApiError(RecsysError):
    """The API server could not be started, reached or stopped."""


def api_url(config: Config) -> str:
    return f"http://{config.serving.host}:{config.serving.api_port}"


def api_dir(config: Config) -> Path:
    """Config file, PID file and log of the API server (next to Triton's build folder)."""
    return Path(config.serving.triton_build_dir).resolve().parent / "api"


def api_keys_file(config: Config) -> Path:
    """The API keys file: serving.auth.api_keys_file, by default api_keys.json in the API's folder (relative paths
    from the project root, as the server sees them, whatever the working directory)."""
    config = absolute_paths(config, PROJECT_ROOT)
    path = Path(config.serving.auth.api_keys_file or api_dir(config) / "api_keys.json")
    return path if path.is_absolute() else PROJECT_ROOT / path


def token_file(config: Config) -> Path:
    """Where the first start writes the token of the admin key it creates (0600, beside the keys file)."""
    return api_keys_file(config).with_name("api_token")


def api_token(config: Config) -> str:
    """The token a local client sends: $RECSYS_API_TOKEN, else the token file the first start wrote."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    try:
        return token_file(config).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ApiError(f"no API token: set ${TOKEN_ENV} or create a key with `recsys serve api-key create` "
                       f"({token_file(config)} is not readable: {err.strerror})") from err


def bearer_from_file(path: Path) -> str:
    """A shell word for curl -H that reads the token from a file (the token itself never appears)."""
    return f'"Authorization: Bearer $(cat {shlex.quote(str(path))})"'


def auth_headers(config: Config) -> dict[str, str]:
    """The Authorization header of a local client (see api_token); none when authentication is off."""
    if not config.serving.auth.enabled:
        return {}
    return {"Authorization": f"Bearer {api_token(config)}"}


def ensure_first_key(config: Config) -> Path | None:
    """On the first start (no keys file yet, authentication on): create one key with every scope, write its token
    once to the 0600 token file and say how to use it. Returns the token file when it was written."""
    keys = api_keys_file(config)
    if not config.serving.auth.enabled or keys.exists():
        return None
    tokens = token_file(config)
    if tokens.exists():
        raise ApiError(f"{tokens} exists but {keys} does not: move the old token away (or restore the keys file)")
    record, token = create_key(keys, "first-start admin", SCOPES)
    write_token_file(tokens, token)
    log.info("created API key %s (%s) in %s; its token is in %s (readable by you only). Use it as\n"
             "  curl -H %s %s/...\nMore keys: `recsys serve api-key create --help`",
             record.id, ", ".join(SCOPES), keys, tokens, bearer_from_file(tokens), api_url(config))
    return tokens


def pid_file(config: Config) -> Path:
    return api_dir(config) / f"api_{config.serving.api_port}.pid"


def log_file(config: Config) -> Path:
    return api_dir(config) / f"api_{config.serving.api_port}.log"


def _startup_failure(path: Path, offset: int) -> str | None:
    """The error of a failed service start in the server log written since `offset` (BentoML keeps the main
    process alive when the worker fails), else None."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    if "Application startup failed" not in text:
        return None
    errors = [line.strip() for line in text.splitlines() if "Error:" in line and not line.startswith(" ")]
    return errors[-1] if errors else "see the log"


def start_api(config: Config, detach: bool = True, timeout_s: float = 90.0) -> int:
    """Start the API on serving.host:serving.api_port and wait for /healthz; returns the server PID.

    detach=True: own session, outlives this process, PID file written (stop with stop_api). Either way the
    caller may stop it by PID with components.processes.stop_process (SIGTERM ends the server and its worker).
    """
    config = absolute_paths(config, PROJECT_ROOT)
    url = api_url(config)
    if http_status(f"{url}/healthz") == 200:
        raise ApiError(f"something already answers at {url}; stop it or set serving.api_port")
    folder = api_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    config.serving.auth.api_keys_file = api_keys_file(config)  # the server and the CLI use the same file
    ensure_first_key(config)
    cfg_path = write_config(config, folder / f"config_{config.serving.api_port}.yaml")
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for name in PROMETHEUS_DIRS:  # set by an imported feast.metrics: BentoML must use a metrics folder of its own
        env.pop(name, None)
    # BentoML keeps Prometheus files in $BENTOML_HOME/prometheus_multiproc_dir and clears it when a server starts
    # or stops: a home per server keeps two APIs on one machine from wiping each other's metrics
    env["BENTOML_HOME"] = str(folder / f"bentoml_home_{config.serving.api_port}")
    env[CONFIG_ENV] = str(cfg_path)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE, "--host", config.serving.host,
           "--port", str(config.serving.api_port), "--working-dir", str(PROJECT_ROOT)]
    log_path = log_file(config)
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = launch(cmd, log_path, env=env, cwd=PROJECT_ROOT, detach=detach)
    wait_ready("the API server", lambda: http_status(f"{url}/healthz") == 200, proc, timeout_s, log_path,
               failure=lambda: _startup_failure(log_path, offset), error=ApiError)
    if detach:
        write_pid_file(pid_file(config), proc.pid)
    return proc.pid


def stop_api(config: Config) -> bool:
    """Stop the detached API named in the PID file; False if none was running.

    Raises PidFileError, stopping nothing, when the pid now belongs to another process (its start time or
    command line differs from the server that was started)."""
    path = pid_file(absolute_paths(config, PROJECT_ROOT))
    pid = owned_pid(path, SERVICE)
    if pid is None:
        return False
    stop_process(pid)
    path.unlink(missing_ok=True)
    return True


def sample_request(config: Config, k: int = 5) -> dict:
    """A /recommend body for this data set: its first known user and a filter on its first filterable
    attribute (two declared categories, or items at or above the catalogue's median)."""
    import pandas as pd

    from components.features import feature_data_dir
    from components.id_maps import load_id_maps
    from components.ingest import id_maps_dir

    schema = config.dataset
    users = load_id_maps(id_maps_dir(config), {"user": schema.user_id.type, "item": schema.item_id.type})["user"]
    user = users.table["external_id"].iloc[0] if len(users) else (1 if schema.user_id.type == "int" else "u-1")
    body: dict = {"user_id": user.item() if hasattr(user, "item") else user, "k": k}
    for name, kind in schema.filterable.items():
        attr = schema.item_attributes[name]
        if kind == "membership" and attr.categories:
            body["filters"] = {name: attr.categories[:2]}
            break
        metadata = feature_data_dir(config) / "item_metadata.parquet"
        if kind == "range" and metadata.is_file():
            median = pd.to_numeric(pd.read_parquet(metadata, columns=[name])[name], errors="coerce").median()
            if median == median:
                body["filters"] = {f"{name}_min": int(median) if float(median).is_integer() else float(median)}
                break
    return body


def sample_curl(config: Config, body: dict | None = None) -> str:
    """A curl line that asks the running API for recommendations (printed by the demo), with the token file's
    token (the token itself is never printed)."""
    payload = json.dumps(body or sample_request(config))
    return (f"curl -s -X POST {api_url(config)}/recommend -H {bearer_from_file(token_file(config))} "
            f"-H 'Content-Type: application/json' -d '{payload}'")

