"""Where the file service keeps the files it serves: a small interface and the directory default.

The HTTP side (ranges, signatures, timeouts) does not care where bytes live, only that a name
gives a size and a readable, seekable handle. One platform keeps them in its data directory
(`DirectoryBlobs`); a pool of workers keeps them in the shared PostgreSQL
(`iotfsm.adapters.store.postgres_blobs`), so the URL one worker signed is served by any other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

import attrs

from ...machines.names import check_name
from ..durable import fsync_dir

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


@attrs.frozen
class FileRef:
    """A published file as the platform puts it in an offer: id, size and lowercase hex md5."""

    file_id: str
    size: int
    md5: str


class BlobStore(Protocol):
    def put(self, name: str, source: Path | bytes) -> FileRef:
        """Store `source` under `name` (replacing what was there) and return its reference;
        a reader meanwhile sees the old content or the new, never a mixture."""

    def ref(self, name: str) -> FileRef | None:
        """The reference of a stored file, None when there is none."""

    def open(self, name: str) -> tuple[BinaryIO, int] | None:
        """A seekable handle on the content and its size, or None when there is no such file."""


class DirectoryBlobs:
    """Files in a directory, copied in through a temporary file and renamed into place."""

    def __init__(self, files_dir: Path, tmp_dir: Path) -> None:
        self.files_dir = files_dir
        self._tmp_dir = tmp_dir
        self._lock = threading.Lock()
        self._refs: dict[str, FileRef] = {}
        """What this process published: a file found on disk from before has no known md5
        until it is published again."""

    def put(self, name: str, source: Path | bytes) -> FileRef:
        check_name(name)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp_dir, prefix="publish-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes | bytearray | memoryview):
                    data = bytes(source)
                    out.write(data)
                    digest.update(data)
                    size = len(data)
                else:
                    with Path(source).open("rb") as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.files_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.files_dir)
        ref = FileRef(name, size, digest.hexdigest())
        with self._lock:
            self._refs[name] = ref
        return ref

    def ref(self, name: str) -> FileRef | None:
        with self._lock:
            return self._refs.get(name)

    def open(self, name: str) -> tuple[BinaryIO, int] | None:
        try:
            handle = (self.files_dir / name).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return handle, os.fstat(handle.fileno()).st_size
