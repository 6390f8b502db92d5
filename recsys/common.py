"""What every sub-command shares: the resolved config, logging, and clean error exits."""

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from components.config import Config, load_config
from components.errors import RecsysError
from components.processes import pid_alive

console = Console(stderr=True)


@dataclass
class State:
    config_path: Path | None = None
    overrides: list[str] = field(default_factory=list)
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            with errors_as_exit():
                self._config = load_config(self.config_path, self.overrides)
        return self._config


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("urllib3", "filelock", "fsspec", "asyncio", "matplotlib", "PIL", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def state(ctx: typer.Context) -> State:
    """The root command's state (config path and overrides)."""
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Turn a RecsysError into a red one-line message and exit code 1."""
    try:
        yield
    except RecsysError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(code=1) from None


def serve_in_foreground(pid: int, what: str, log_path: Path, stop: Callable[[int], object]) -> None:
    """Wait on a server started in the foreground: exit 1 (naming its log) if it dies, stop it on Ctrl-C or
    SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while pid_alive(pid):
            time.sleep(0.5)
        console.print(f"[bold red]the {what} exited[/]; see {log_path}")
        raise typer.Exit(code=1)
    except KeyboardInterrupt:
        console.print(f"stopping the {what} ...")
        stop(pid)
