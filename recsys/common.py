"""What every sub-command shares: the resolved config, logging, and clean error exits."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from components.config import Config, load_config
from components.errors import RecsysError

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
