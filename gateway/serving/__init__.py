"""Serving HTTP: the gunicorn worker that reads requests in its event loop, so slow
clients cannot hold threads, and stops gracefully."""
