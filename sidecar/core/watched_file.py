"""A file whose content is re-read only when it changes: one `stat` per read otherwise.

Secrets and access tokens live in mounted Kubernetes Secrets, rotated by swapping the `..data`
symlink; the path stays the same but the file behind it changes. Comparing (inode, mtime, size)
catches the swap and an in-place rewrite alike, without reading the file on every call.

Usage::

    token = WatchedFile(Path("/var/run/secrets/sidecar/evaluation-token"))
    token.read()    # the bytes; read again only after the file changed
"""

from __future__ import annotations

import os
from pathlib import Path


class WatchedFile:
    """The bytes of one file, cached until its stat stamp changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._content = b""

    def read(self) -> bytes:
        """The file's bytes; OSError if it cannot be read (absent, unreadable)."""
        info = os.stat(self.path)
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            self._content, self._stamp = self.path.read_bytes(), stamp
        return self._content
