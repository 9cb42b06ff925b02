"""Downloading, verifying and unpacking published weight files (used by `weights.fetch`).

`download(url, destination)` streams to `destination + '.part'` with a tqdm progress bar and
renames it only when every byte the server announced has arrived; a `.part` left by an
interrupted run is resumed with an HTTP Range request when the server honours it (206), and
restarted otherwise. `verify(path, ...)` checks the size and the sha256 (full or a published
prefix). `extract(archive, directory, wanted)` unpacks a .zip or .tar(.gz) after refusing every
member that could escape `directory`: absolute paths, '..' components, and links (symbolic or
hard) whose target leaves it; only regular files named `wanted` (and their siblings sharing that
prefix, e.g. a TF checkpoint's .index and .data shards) are written.

Only the standard library is used (urllib, tarfile, zipfile, hashlib), so fetching adds no
dependency.
"""

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile

from tqdm import tqdm

from deeplab_jax.data.builders.files import stays_inside
from deeplab_jax.weights.mapping import WeightImportError

CHUNK = 1 << 20
TIMEOUT_S = 60


class FetchError(WeightImportError):
    """A download or archive that cannot be used (network, size, checksum, unsafe member)."""


def _open(url, start):
    request = urllib.request.Request(url, headers={"User-Agent": "deeplab-jax"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the .part is already whole (or the server disagrees)
            return None
        raise FetchError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise FetchError(f"cannot download {url}: {getattr(error, 'reason', error)}") from None


def download(url, destination, progress=True):
    """Downloads `url` to `destination` (a local path) through `destination.part`; returns it."""
    destination = os.fspath(destination)
    part = destination + ".part"
    start = os.path.getsize(part) if os.path.exists(part) else 0
    response = _open(url, start)
    if response is None:
        os.replace(part, destination)
        return destination
    with response:
        resumed = start and response.status == 206
        if start and not resumed:
            start = 0  # the server sent the whole file: start again
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(destination), disable=not progress) as bar:
            try:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, ValueError) as error:  # http.client.IncompleteRead is an OSError
                raise _truncated(url, received, total, part, error) from None
    if total is not None and received != total:
        raise _truncated(url, received, total, part, "connection closed")
    os.replace(part, destination)
    return destination


def _truncated(url, received, total, part, why):
    return FetchError(
        f"download of {url} stopped after {received} of {total if total else '?'} bytes "
        f"({why}); nothing was converted. Run the same command again to resume from {part}")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path, url, *, size_mb=None, size_tolerance=0.0, sha256=None, sha256_prefix=None):
    """The file's sha256, after checking its size and digest against what was published.

    A mismatch deletes the file (it is not the published one) and raises a FetchError naming the
    URL, the expected and the actual value.
    """
    size = os.path.getsize(path)
    if size_mb:
        expected = size_mb * 1e6
        # Publishers round and mix MB with MiB: accept either within the tolerance.
        if not any(abs(size - expected * unit) <= size_tolerance * expected * unit
                   for unit in (1.0, 1.048576)):
            os.remove(path)
            raise FetchError(f"size mismatch for {url}: expected about {size_mb} MB (published), "
                             f"got {size} bytes; the file is not the published one")
    actual = sha256_of(path)
    expected_digest = (sha256 or sha256_prefix or "").lower()
    if expected_digest and not actual.startswith(expected_digest):
        os.remove(path)
        what = "sha256" if sha256 else "sha256 prefix"
        raise FetchError(f"checksum mismatch for {url}: expected {what} {expected_digest}, got "
                         f"sha256 {actual}; the download is corrupt or not the published file")
    return actual


def _link_inside(name, link_target, directory, hard):
    """A link member whose target stays inside `directory`: a symbolic link resolves from its
    own folder, a hard link names another member of the archive."""
    if not link_target or link_target.startswith(("/", "\\")):
        return False
    base = "" if hard else posixpath.dirname(name)
    joined = posixpath.normpath(posixpath.join(base, link_target.replace("\\", "/")))
    return stays_inside(joined, directory)


def _wanted(name, wanted):
    base = posixpath.basename(name)
    return base == wanted or base.startswith(wanted + ".")


def extract(archive, directory, wanted, kind):
    """Unpacks the regular files named `wanted` (or `wanted.*`) of `archive` into `directory`.

    Every member is checked first; one that could escape `directory` makes the whole archive an
    error. Returns the extracted paths.
    """
    os.makedirs(directory, exist_ok=True)
    if kind == "zip":
        return _extract_zip(archive, directory, wanted)
    if kind in ("tar", "tar.gz", "tgz", "tar.bz2", "tar.xz"):
        return _extract_tar(archive, directory, wanted)
    raise ValueError(f"unknown archive kind {kind!r}")


def _refuse(archive, name, why):
    return FetchError(f"{archive}: refusing the archive: member {name!r} {why} (it could write "
                      "outside the extraction directory)")


def _extract_tar(archive, directory, wanted):
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise FetchError(f"{archive}: not a readable tar archive ({error})") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise FetchError(f"{archive}: corrupt tar archive ({error})") from None
        for member in members:
            if not stays_inside(member.name, directory):
                raise _refuse(archive, member.name, "has an absolute path or '..'")
            if (member.issym() or member.islnk()) and not _link_inside(
                    member.name, member.linkname, directory, member.islnk()):
                raise _refuse(archive, member.name, f"links to {member.linkname!r}")
            if member.isdev() or member.isfifo():
                raise _refuse(archive, member.name, "is a device or fifo")
        paths = []
        for member in members:
            if member.isfile() and _wanted(member.name, wanted):
                target = os.path.join(directory, *member.name.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                paths.append(target)
    return paths


def _extract_zip(archive, directory, wanted):
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise FetchError(f"{archive}: not a readable zip archive ({error})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            if not stays_inside(info.filename, directory):
                raise _refuse(archive, info.filename, "has an absolute path or '..'")
            if stat.S_ISLNK(info.external_attr >> 16):
                link_target = zf.read(info).decode("utf-8", "replace")
                if not _link_inside(info.filename, link_target, directory, hard=False):
                    raise _refuse(archive, info.filename, f"links to {link_target!r}")
        paths = []
        for info in infos:
            if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16):
                continue
            if _wanted(info.filename, wanted):
                target = os.path.join(directory, *info.filename.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    with zf.open(info) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                except (zipfile.BadZipFile, OSError, EOFError) as error:
                    raise FetchError(f"{archive}: corrupt member {info.filename!r} ({error})") \
                        from None
                paths.append(target)
    return paths
