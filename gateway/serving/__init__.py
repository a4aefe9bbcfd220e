"""Serving HTTP under gunicorn: admission to the app (bounded body reads, places per worker) and the
graceful stop and reload through gunicorn's public hooks."""
