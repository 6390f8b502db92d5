"""Transient failures are retried, data and configuration errors are not."""

import pytest

from components.errors import RecsysError, TransientError, retry_transient


def _failing(errors: list[BaseException]):
    calls = []

    def action():
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    return action, calls


def test_transient_failures_are_retried_until_success():
    action, calls = _failing([ConnectionError("refused"), TransientError("not ready")])
    assert retry_transient(action, attempts=3, backoff_s=0.0) == "done"
    assert len(calls) == 3


def test_a_data_error_fails_on_the_first_try():
    action, calls = _failing([RecsysError("users table: missing column 'tier'")])
    with pytest.raises(RecsysError, match="missing column 'tier'"):
        retry_transient(action, attempts=3, backoff_s=0.0)
    assert len(calls) == 1


def test_attempts_run_out():
    action, calls = _failing([TimeoutError("slow")] * 5)
    with pytest.raises(TimeoutError):
        retry_transient(action, attempts=2, backoff_s=0.0)
    assert len(calls) == 2
