"""The base of every error the command line reports as a clean message instead of a traceback."""


class RecsysError(Exception):
    """A problem the user can act on; the message says what is wrong and where."""


class TransientError(RecsysError):
    """A failure worth retrying (a server not answering yet, a dropped connection): `retry_transient` retries it;
    every other error (data, configuration) fails at once."""


TRANSIENT_TYPES: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError)


def retry_transient(action, attempts: int = 3, backoff_s: float = 2.0, what: str = "step"):
    """`action()`, retried up to `attempts` times with doubling back-off when it fails transiently (see
    TRANSIENT_TYPES, plus the client libraries' connection errors); a data or configuration error is raised
    on the first try. Pipelines use this instead of KFP's retry policy, which cannot tell the two apart."""
    import logging
    import time

    log = logging.getLogger("recsys.retry")
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - classified below
            transient = isinstance(err, TRANSIENT_TYPES) or type(err).__name__ in {"ConnectionError",
                                                                                   "InactiveRpcError"}
            if not transient or attempt == attempts:
                raise
            log.warning("%s failed transiently (attempt %d of %d): %s; retrying in %.0f s", what, attempt,
                        attempts, err, backoff_s)
            time.sleep(backoff_s)
            backoff_s *= 2
    raise AssertionError("unreachable")
