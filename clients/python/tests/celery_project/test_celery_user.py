"""The Celery user's own tests, unchanged but for the import line: they
submit with `delay`, read `AsyncResult(...).state` in Celery's words and
rely on `bind=True`, `autoretry_for` and `retry_backoff`. The worker
(`conveyor-worker -A tasks -P process`) and the server come from conftest."""

# Celery:   from celery.result import AsyncResult
from conveyor import AsyncResult  # changed: the import

from tasks import add, fetch, progress, strict


def test_add():
    result = add.delay(2, 3)
    assert result.get(timeout=10) == 5
    assert AsyncResult(result.id).state == "SUCCESS"


def test_fetch_retries_with_backoff():
    result = fetch.delay("https://example.invalid/data")
    value = result.get(timeout=20)
    assert value["retries"] == 2 and value["id"] == result.id
    assert AsyncResult(result.id).state == "SUCCESS"


def test_strict_fails():
    result = strict.delay(-1)
    try:
        result.get(timeout=10)
    except Exception as error:  # Celery raises the task's exception type; Conveyor its TaskFailed
        assert "negative" in str(error)
    else:
        raise AssertionError("strict(-1) should fail")
    assert result.state == "FAILURE"
    assert result.failed()


def test_progress_then_success():
    result = progress.delay(3)
    assert result.get(timeout=10) == 3
    assert result.status == "SUCCESS"
