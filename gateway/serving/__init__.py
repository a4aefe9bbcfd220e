"""Serving HTTP under gunicorn: admission to the app (bounded body reads, places per worker) and the
graceful stop and reload through gunicorn's public hooks."""


def under_gevent() -> bool:
    """Whether gevent has patched this process (gunicorn.conf.py does, first, for the gevent worker):
    the one test for "greenlets, not threads" that admission and the graceful stop both ask."""
    from gevent import monkey

    return monkey.is_module_patched("socket")
