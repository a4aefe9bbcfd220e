"""The gateway's private state directory (``GATEWAY_STATE_DIR``): where it is, and the checks that
only the gateway's user can reach it. Used by the revocation store (gateway.identity.hoststate)
and by gunicorn.conf.py for the metrics samples, before anything imports prometheus_client, so
this module imports nothing but the settings' error."""
from __future__ import annotations

import os
import stat

from gateway.config import ConfigError


def state_dir(value: str) -> str:
    """``GATEWAY_STATE_DIR``'s value, or else ``instance/`` beside the ``gateway`` package (where
    Flask puts the app's instance folder when it runs from a checkout)."""
    return os.path.abspath(value) if value else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "instance")


def private_dir(path: str, files: tuple[str, ...] = ()) -> str:
    """``path`` made (0700) if missing, then checked with each of ``files`` in it; returns it.

    Raises ConfigError (one line naming GATEWAY_STATE_DIR) if the directory or a store file is a
    symlink, not what it should be (a directory, regular files), owned by another user, or open to
    group or others in any way: another local user could then delete or forge marks, or lock the
    shared-memory file (a read lock needs only read access) so that no logout is recorded. Also if
    another user could move the directory (or one above it) away and put one of theirs in its place:
    every directory above it must be root's or the gateway's user's, and writable by no one else
    unless sticky (as /tmp is).
    """
    path = os.path.abspath(path)
    _refuse_if_others_can_move(path)  # before anything is made in it
    try:
        os.lstat(path)
    except FileNotFoundError:
        try:
            os.makedirs(path, 0o700)
        except FileExistsError:
            pass  # made meanwhile, perhaps by someone else: checked below like any other
        except OSError as exc:
            raise ConfigError(f"GATEWAY_STATE_DIR: cannot create {path}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise ConfigError(f"GATEWAY_STATE_DIR: cannot read {path}: {exc.strerror or exc}") from None
    _refuse_unless_private(path, directory=True)
    _refuse_if_others_can_move(path)
    for name in files:
        _refuse_unless_private(os.path.join(path, name), directory=False)
    return path


def _refuse_unless_private(path: str, *, directory: bool) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if directory:
            raise ConfigError(f"GATEWAY_STATE_DIR: {path} vanished while it was being checked") from None
        return  # a file not made yet: its maker makes it 0600
    except OSError as exc:
        raise ConfigError(f"GATEWAY_STATE_DIR: cannot read {path}: {exc.strerror or exc}") from None
    what, mode = ("directory", "0700") if directory else ("store file", "0600")
    if stat.S_ISLNK(info.st_mode):
        problem = "is a symlink"
    elif directory and not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif not directory and not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"is owned by uid {info.st_uid}, not by the gateway's user (uid {os.geteuid()})"
    elif info.st_mode & 0o077:
        problem = f"is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}; it must be {mode})"
    else:
        return
    raise ConfigError(f"GATEWAY_STATE_DIR: the {what} {path} {problem}; the revocation store needs a "
                      f"directory only the gateway's user can reach (mode 700, files 600): fix it, or remove "
                      f"it and the gateway makes it")


def _refuse_if_others_can_move(path: str) -> None:
    # Every directory above it, not only the parent: whoever may rename any of them can put a
    # tree of their own at the same path for the next worker to open (a grandparent owned by
    # another user is enough).
    parent = os.path.dirname(path)
    while True:
        _refuse_if_others_can_replace_in(parent, path)
        above = os.path.dirname(parent)
        if above == parent:
            return
        parent = above


def _refuse_if_others_can_replace_in(parent: str, path: str) -> None:
    try:
        info = os.stat(parent)
    except FileNotFoundError:
        return  # made by makedirs, then checked again
    except OSError as exc:
        raise ConfigError(f"GATEWAY_STATE_DIR: cannot read {parent}: {exc.strerror or exc}") from None
    if info.st_uid not in (0, os.geteuid()):
        problem = f"is owned by uid {info.st_uid}, who could replace the directory"
    elif info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        problem = f"lets other users replace the directory (mode {stat.S_IMODE(info.st_mode):04o}, not sticky)"
    else:
        return
    raise ConfigError(f"GATEWAY_STATE_DIR: the directory {parent} above {path} {problem}; "
                      "choose a directory whose parents only root or the gateway's user can write to")
