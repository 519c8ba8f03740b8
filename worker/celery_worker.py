"""The worker entry module: ``celery -A worker.celery_worker worker``."""

from shared.celery_app import create_celery
from shared.settings import Settings
from worker import tasks  # noqa: F401  (registers the tasks and the after-fork model load)

celery_app = create_celery(Settings.from_env())
