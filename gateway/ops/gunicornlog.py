"""gunicorn's own log lines (``logger_class`` in gunicorn.conf.py) in the gateway's shapes and on its
log path, and no access-log work."""
from __future__ import annotations

import logging
import re
import sys

from gunicorn import glogging

from gateway import config as settings
from gateway.ops import logwriter
from gateway.ops.logformat import JsonFormatter, TextFormatter


class GunicornLogger(glogging.Logger):
    """gunicorn's own log lines in the gateway's format, and no access-log work.

    gunicorn builds an access-log record for every request whenever any logging
    configuration is given, even with the access log off; this logger only does
    when an access log is actually configured (ours, in gateway.ops.logs, is enough).
    """

    @property
    def access_log_enabled(self):
        return bool(self.cfg.accesslog)

    def setup(self, cfg):
        # Only the handlers this setup makes are gunicorn's own: not those already there (someone
        # else's), nor a logconfig's, which name their formats. (gunicorn marks its own with a
        # private attribute, not read here.)
        others = set(self.error_log.handlers) | set(self.access_log.handlers)
        super().setup(cfg)
        self.error_log.addFilter(_without_queries)  # whatever the handlers, a logconfig's too
        if cfg.logconfig or cfg.logconfig_dict or cfg.logconfig_json:
            return
        fmt = _setting_or_default("GATEWAY_LOG_FORMAT")
        if cfg.errorlog == "-":
            # gunicorn's own lines go the way of the gateway's: one queue, one writer thread per
            # process (gateway.ops.logwriter). A log reader that stalls then costs lines, counted, and
            # never holds the master's signal handling (a stop, a reload) in a blocking write.
            # Only the stream gunicorn made for "-": a syslog handler (--log-syslog) stays.
            for handler in set(self.error_log.handlers) - others:
                if type(handler) is logging.StreamHandler:
                    self.error_log.removeHandler(handler)
            self.error_log.propagate = True
            logwriter.ensure_configured(_setting_or_default("GATEWAY_LOG_LEVEL"), fmt)
        if fmt == "json":
            error_format = JsonFormatter()
        else:  # gunicorn's layout, one line per event like ours (its messages may quote a request)
            error_format = TextFormatter(self.error_fmt, self.datefmt)
        for log, formatter in ((self.error_log, error_format), (self.access_log, TextFormatter(self.access_fmt))):
            for handler in set(log.handlers) - others:
                handler.setFormatter(formatter)

    def exception(self, msg, *args, **kwargs):
        # The one time-out gunicorn meets writing an answer is the client's (GATEWAY_CLIENT_TIMEOUT,
        # set on its socket by gateway.serving.admission): a reader that stopped reading, cut off
        # as designed. One line says so; a traceback of gunicorn's and gevent's frames says nothing more.
        if isinstance(sys.exc_info()[1], TimeoutError):
            self.warning("a client stopped reading its answer for GATEWAY_CLIENT_TIMEOUT: connection closed")
            return
        super().exception(msg, *args, **kwargs)


def _setting_or_default(name: str):
    """A setting for gunicorn's lines; an invalid one gets its default here, and the app's load then
    refuses it, with every other problem, in one line (not a traceback from inside gunicorn)."""
    try:
        return settings.value(name)
    except settings.ConfigError:
        return settings.value(name, {})


_QUERY = re.compile(r"\?\S+")  # a query, not a question ("Perhaps out of memory?"); quotes too


def _without_queries(record: logging.LogRecord) -> bool:
    """gunicorn quotes a request line it refuses; its query may carry a hand-off token."""
    message = record.getMessage()
    if "?" in message:
        record.msg, record.args = _QUERY.sub("?[query removed]", message), None
    return True
