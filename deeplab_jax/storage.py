"""Where outputs go: local directories or object stores (gs://...), through `etils.epath`.

Every workdir and output path of training, evaluation and prediction goes through `as_path`: a
local path becomes an absolute `epath.Path` (orbax wants absolute local paths), a URL such as
`gs://bucket/run` stays a URL, so every process of a pod writes to the bucket rather than to a
local directory named 'gs:'. Object stores have no append and no rename of directories, so
writers here rewrite whole (small) objects; `write_atomic` gives readers either the old or the
new content of a file on both.

A full disk turns into one `DiskFullError` naming what was being written (`raise_if_disk_full`),
instead of the tracebacks of every thread that happened to be writing.
"""

import errno
import os
import uuid

from etils import epath

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How tensorstore (orbax's array writer) and others word ENOSPC in errors that carry no errno.
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded")


class DiskFullError(OSError):
    """The disk (or quota) holding the workdir is full."""


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def as_path(path) -> epath.Path:
    """An epath.Path: URLs (gs://, s3://, ...) unchanged, local paths made absolute."""
    if isinstance(path, epath.Path) and is_url(path):
        return path
    text = os.fspath(path)
    return epath.Path(text if is_url(text) else os.path.abspath(text))


def write_atomic(path, data: bytes | str) -> None:
    """Replaces the file at `path` with `data`; a reader never sees a partial file.

    Local files: written beside the target, then renamed over it. Object stores: one object
    upload, which is atomic there.
    """
    path = as_path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if is_url(path):
        path.write_bytes(data)
        return
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _chain(error):
    """`error` and every exception it was raised from or during, group members included."""
    seen, queue = set(), [error]
    while queue:
        current = queue.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        queue += [current.__cause__, current.__context__]
        queue += list(getattr(current, "exceptions", ()))


def is_disk_full(error: BaseException) -> bool:
    for current in _chain(error):
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _DISK_FULL_TEXT):
            return True
    return False


def raise_if_disk_full(error: BaseException, what: str, path, advice: str = "") -> None:
    """Raises one DiskFullError naming `what` and `path` when `error` (or its cause) is ENOSPC."""
    if is_disk_full(error):
        raise DiskFullError(
            errno.ENOSPC, f"no space left on device while writing {what} to {os.fspath(path)}"
            + (f"; {advice}" if advice else "")) from None
