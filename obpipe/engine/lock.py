"""One run at a time on a products directory: a lock file for the whole run.

``PRODUCTS_DIR/.obpipe.engine.lock`` holds JSON: the holder's ``pid``, ``host``, process start
time, ``started_utc``, a random ``token`` and, for a URL (fsspec: ``s3://``,
``memory://`` ...), ``lease_expires_utc``.

* Local directory: the file is created with ``O_CREAT | O_EXCL`` (atomic). A lock whose
  holder is a dead process on this host (or a live process that started after the lock
  was taken: a reused pid) is stale: it is taken over with a warning.
* URL: object stores have no exclusive create, so the lock is a lease object that the
  holder renews every ``lease_s / 3`` seconds from a daemon thread; an expired lease is
  taken over with a warning. After writing, the object is read back and the run goes on
  only if it still holds this run's token.

A second run finds a live lock and raises :class:`ProductsLocked`, whose message names
the holder (the CLI exits 2 with it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from obpipe.io import store

log = logging.getLogger(__name__)

LOCK_FILE = ".obpipe.engine.lock"
#: lease of a lock on a URL, seconds (renewed every third of it while the run lives)
LEASE_S = 120.0


class ProductsLocked(RuntimeError):
    """Another run holds the products directory."""


def lock_path(products_dir: str) -> str:
    return os.path.join(products_dir, LOCK_FILE) if not store.is_url(products_dir) \
        else products_dir.rstrip("/") + "/" + LOCK_FILE


def process_start(pid: int) -> float | None:
    """Creation time (s since the epoch) of process ``pid`` on this host, or None when
    there is no such process or it is not ours to look at."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # no such process, or no permission to look
        return None


def process_gone(pid: int, recorded_start: float | None) -> str | None:
    """Why process ``pid`` of this host, created at ``recorded_start``, is known to be gone:
    not running, or its pid now belongs to another process; None if it may be alive."""
    start = process_start(pid)
    if start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"pid {pid} is not running"
        except PermissionError:
            return None
        return None
    if recorded_start is not None and abs(start - float(recorded_start)) > 1.0:
        return f"pid {pid} is now another process"
    return None


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _record(lease_s: float | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                           "process_start": process_start(os.getpid()),
                           "started_utc": _now().isoformat(timespec="seconds"),
                           "token": uuid.uuid4().hex}
    if lease_s is not None:
        rec["lease_expires_utc"] = (_now() + _dt.timedelta(seconds=lease_s)).isoformat()
    return rec


def describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('started_utc')}")


def _read(path: str) -> dict[str, Any] | None:
    try:
        with store.open_file(path, "rb") as fh:
            return json.loads(fh.read().decode() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or garbage: treated as held by an unknown run


def _stale_local(holder: dict[str, Any]) -> str | None:
    """Why a local lock is stale (None if its holder may be alive)."""
    if holder.get("host") != socket.gethostname():
        return None  # another host's process: cannot be checked from here
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return None
    return process_gone(pid, holder.get("process_start"))


def _acquire_local(path: str, products_dir: str) -> dict[str, Any]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _attempt in range(3):
        rec = _record(None)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile
            why = _stale_local(holder) if holder else None
            if why is None:
                raise ProductsLocked(
                    f"{products_dir} is in use by another obpipe run ({describe(holder)}; "
                    f"lock file {path}); wait for it to end, or remove the lock file if "
                    "that run is gone") from None
            log.warning("%s: taking over a stale lock (%s, %s)", path, describe(holder), why)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(rec, fh)
        return rec
    raise ProductsLocked(f"{products_dir}: could not take the lock {path} (contended)")


def _write_url(path: str, rec: dict[str, Any]) -> None:
    with store.open_file(path, "wb") as fh:
        fh.write(json.dumps(rec).encode())


def _acquire_url(path: str, products_dir: str, lease_s: float) -> dict[str, Any]:
    holder = _read(path)
    if holder:
        expires = holder.get("lease_expires_utc")
        if expires and _dt.datetime.fromisoformat(expires) > _now():
            raise ProductsLocked(
                f"{products_dir} is in use by another obpipe run ({describe(holder)}, lease "
                f"until {expires}; lock object {path}); wait for it to end or for the lease "
                "to expire")
        log.warning("%s: taking over an expired lease (%s)", path, describe(holder))
    rec = _record(lease_s)
    _write_url(path, rec)
    back = _read(path) or {}
    if back.get("token") != rec["token"]:
        raise ProductsLocked(f"{products_dir} was taken by another obpipe run "
                             f"({describe(back)}) while this one was starting")
    return rec


@contextlib.contextmanager
def products_lock(products_dir: str, lease_s: float = LEASE_S) -> Iterator[dict[str, Any]]:
    """Hold the products directory's lock for the block (yields the lock record)."""
    path = lock_path(products_dir)
    url = store.is_url(products_dir)
    rec = _acquire_url(path, products_dir, lease_s) if url else _acquire_local(
        path, products_dir)
    stop = threading.Event()
    renewer = None
    if url:
        def renew() -> None:
            while not stop.wait(lease_s / 3):
                now = _dt.datetime.now(_dt.UTC)
                rec["lease_expires_utc"] = (now + _dt.timedelta(seconds=lease_s)).isoformat()
                try:
                    _write_url(path, rec)
                except OSError as exc:
                    log.warning("%s: lease not renewed: %s", path, exc)

        renewer = threading.Thread(target=renew, name="obpipe-lock-lease", daemon=True)
        renewer.start()
    log.info("%s: lock taken (pid %d)", path, os.getpid())
    try:
        yield rec
    finally:
        stop.set()
        if renewer is not None:
            renewer.join(timeout=5)
        held = _read(path)
        if held and held.get("token") == rec["token"]:
            with contextlib.suppress(FileNotFoundError):
                store.remove(path)

