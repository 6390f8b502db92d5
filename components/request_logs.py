"""Open the request log a configured target names (contract C6): the one place that picks the backend.

A path is an SQLite file (`components.request_log.SQLiteRequestLog`, the embedded default); a ``postgresql://``
URL is a PostgreSQL database that many API replicas share (`components.request_log_pg.PostgresRequestLog`).
"""

from __future__ import annotations

from pathlib import Path

from components.request_log import RequestLog, SQLiteRequestLog, is_postgres_url
from components.request_log_pg import PostgresRequestLog


def open_request_log(target: str | Path) -> RequestLog:
    """The request log at `target`: PostgreSQL for a ``postgresql://`` (or ``postgres://``) URL, else SQLite."""
    if is_postgres_url(target):
        return PostgresRequestLog(str(target))
    return SQLiteRequestLog(target)
