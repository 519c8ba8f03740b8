"""What api/ and worker/ share: settings, models, job rules, parameters, storage, the Celery app."""
