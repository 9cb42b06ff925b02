"""File helpers the builders share: list files, and archives checked and extracted safely.

Everything here reads the manual directory or the TFDS download directory, which are local: a
remote TFDS data_dir is built in a local staging directory first (sources.prepare).
"""

import hashlib
import os
import tarfile
import zipfile
from typing import List, Optional, Sequence

from absl import logging

from deeplab_jax.data.builders.validation import ArchiveError


def first_existing(root: str, candidates: Sequence[str]) -> Optional[str]:
    for candidate in candidates:
        path = os.path.join(root, candidate)
        if os.path.exists(path):
            return path
    return None


def read_id_list(path: str) -> List[str]:
    """Ids of a list file, one per line (the first whitespace-separated field)."""
    with open(path) as stream:
        return [line.split()[0] for line in stream if line.strip()]


def stays_inside(name: str, destination: str) -> bool:
    """True when archive member `name`, joined to `destination`, stays inside it: not absolute
    (POSIX, Windows drive or backslash), no '..' part, and no symbolic link on the way out.
    The one containment rule of every archive this package unpacks (data sets and weights)."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return False
    target = os.path.realpath(os.path.join(destination, *parts))
    root = os.path.realpath(destination)
    return target == root or target.startswith(root + os.sep)


def _inside(destination: str, name: str) -> None:
    """ArchiveError if member `name` would land outside `destination`."""
    if not stays_inside(name, destination):
        raise ArchiveError(f"archive member {name!r} would be written outside {destination}; "
                           "refusing to extract this archive")


def extract_members(archive: str, prefixes: Sequence[str], destination: str):
    """Extracts the regular files and folders under any of `prefixes` (all if empty).

    Refuses (ArchiveError) a member whose path leaves `destination` (absolute or '..' paths), and
    turns a truncated or corrupt archive into an ArchiveError naming it. Links are not extracted.
    """
    logging.info("extracting %s (members under %s) into %s", archive, list(prefixes) or "all",
                 destination)
    os.makedirs(destination, exist_ok=True)

    def wanted(name):
        return not prefixes or any(name.startswith(prefix) for prefix in prefixes)

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                members = [info for info in bundle.infolist() if wanted(info.filename)]
                for info in members:
                    _inside(destination, info.filename)
                for info in members:
                    bundle.extract(info, destination)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                # Streaming order: one pass over a compressed tar, members filtered as they come.
                for member in bundle:
                    name = member.name.removeprefix("./")
                    if wanted(name) and (member.isfile() or member.isdir()):
                        _inside(destination, member.name)
                        bundle.extract(member, destination, filter="data")
        else:
            raise ArchiveError(f"{archive} is neither a zip nor a tar archive (truncated or not "
                               "the original file?)")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        if isinstance(error, ArchiveError):
            raise
        raise ArchiveError(f"{archive} is truncated or corrupt ({type(error).__name__}: {error})"
                           ) from error


def check_published(path: str, size: Optional[int], md5: Optional[str], url: str):
    """ArchiveError unless `path` has the published size and MD5 (each checked where not None)."""
    actual_size = os.path.getsize(path)
    if size is not None and actual_size != size:
        raise ArchiveError(f"{path} (from {url}) has {actual_size} bytes; the published size is "
                           f"{size} (truncated download?)")
    if md5 is not None:
        digest = hashlib.md5()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != md5:
            raise ArchiveError(f"{path} (from {url}) has MD5 {digest.hexdigest()}; the published "
                               f"MD5 is {md5}")
