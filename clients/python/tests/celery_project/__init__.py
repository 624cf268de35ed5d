"""A Celery project moved to Conveyor (see tasks.py); a package only so that its conftest does not shadow the suite's."""
