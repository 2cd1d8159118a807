"""The file service's files in PostgreSQL, so every worker of a pool serves every signed URL.

Why the database and not a shared directory: the pool already depends on PostgreSQL and nothing
else shared. A shared directory would add a network file system to deploy, back up and keep
consistent (NFS rename and fsync semantics differ per server); in the database a publish is one
transaction, atomic for every reader, and backed up with the sessions that point at it. Firmware
images and resources are small (kB to a few MB) and are published rarely and read by ranges: a
read fetches only the range asked for (`substring` on the bytea, stored uncompressed), so a
resumed download does not pull the whole image out of the database again.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import BinaryIO

from ...machines.names import check_name
from ..http.blobs import CHUNK, FileRef
from .postgres import PostgresStore

log = logging.getLogger(__name__)


class PostgresBlobs:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        with store.connection() as conn:
            # EXTERNAL: kept out of line and uncompressed, so substring reads only its pages
            conn.execute("ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL")

    def put(self, name: str, source: Path | bytes) -> FileRef:
        check_name(name)
        data = bytes(source) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
        ref = FileRef(name, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())
        with self._store.connection() as conn:
            conn.execute(
                "INSERT INTO blobs (name, size, md5, data) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET size = EXCLUDED.size, md5 = EXCLUDED.md5,"
                " data = EXCLUDED.data",
                (name, ref.size, ref.md5, data),
            )
        return ref

    def ref(self, name: str) -> FileRef | None:
        with self._store.connection() as conn:
            row = conn.execute("SELECT size, md5 FROM blobs WHERE name = %s", (name,)).fetchone()
        return None if row is None else FileRef(name, int(row[0]), str(row[1]))

    def open(self, name: str) -> tuple[BinaryIO, int] | None:
        ref = self.ref(name)
        if ref is None:
            return None
        return io.BufferedReader(_BlobReader(self._store, name, ref.size), CHUNK), ref.size


class _BlobReader(io.RawIOBase):
    """A read-only, seekable view of one blob; each read is one `substring` query."""

    def __init__(self, store: PostgresStore, name: str, size: int) -> None:
        super().__init__()
        self._store = store
        self._name = name
        self._size = size
        self._offset = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._offset, io.SEEK_END: self._size}[whence]
        self._offset = max(0, base + offset)
        return self._offset

    def tell(self) -> int:
        return self._offset

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        wanted = min(len(buffer), CHUNK, self._size - self._offset)
        if wanted <= 0:
            return 0
        with self._store.connection() as conn:
            row = conn.execute(
                "SELECT substring(data FROM %s FOR %s) FROM blobs WHERE name = %s",
                (self._offset + 1, wanted, self._name),
            ).fetchone()
        chunk = b"" if row is None else bytes(row[0])
        buffer[: len(chunk)] = chunk
        self._offset += len(chunk)
        return len(chunk)
