"""The receiving side of ``send_file``: chunks written at their offsets, committed by the last frame.

:class:`FileReceiver` is what the embedded server runs for ``FID_FILE`` when it
is given a ``files_dir``; a test server of one's own can register it for any
Fid (``server.register(fid, receiver.handle)``). The convention is in
:mod:`nexus_green.protocol.files`.

Example::

    >>> import pathlib, tempfile
    >>> from nexus_green.protocol.frames import Frame
    >>> with tempfile.TemporaryDirectory() as d:
    ...     rx = FileReceiver(d)
    ...     base = {"file-id": "ab" * 16, "file-size": "5", "file-name": "hi.txt"}
    ...     rx.handle(Frame(body=b"hello", headers={**base, "file-offset": "0"})) is None
    ...     reply = rx.handle(Frame(headers={**base, "file-offset": "5", "file-last": "1", "file-chunks": "1"}))
    ...     reply.code, pathlib.Path(d, "hi.txt").read_text()
    True
    (200, 'hello')
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Optional

from ..protocol.files import FILE_CHUNKS, FILE_ID, FILE_LAST, FILE_NAME, FILE_OFFSET, FILE_SIZE
from ..protocol.frames import Frame
from .server import Reply

__all__ = ["FileReceiver"]

_FILE_ID = re.compile(r"[0-9a-f]{32}\Z")


class _Incoming:
    __slots__ = ("fd", "part", "size", "received", "chunks", "error", "last")

    def __init__(self, fd: int, part: str, size: int) -> None:
        self.last = time.monotonic()
        self.fd = fd
        self.part = part
        self.size = size
        self.received = 0
        self.chunks = 0
        self.error = ""


class FileReceiver:
    """Write files sent with ``send_file`` into ``directory``; at most ``max_open`` transfers at once.

    Chunks go to a hidden ``.<file-id>.part`` file at their offsets; the
    commit frame checks that every byte and chunk arrived, moves the file to
    its name (the base name only: a sender cannot write outside
    ``directory``) and answers ``{"name", "size", "sha256"}`` as JSON. A
    transfer that cannot complete is answered 409 (chunks missing) or 400
    (malformed headers) and its part file removed. A transfer that got no
    chunk for ``abandon_after`` seconds (its sender gave up or lost its link)
    is dropped, part file and all, when the next transfer starts.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_open: int = 64, abandon_after: float = 60.0) -> None:
        self.directory = os.fspath(directory)
        self.max_open = max_open
        self.abandon_after = abandon_after
        self._open: dict[str, _Incoming] = {}
        self.completed = 0
        self.failed = 0

    @property
    def in_progress(self) -> int:
        """Transfers with chunks received and no commit yet."""
        return len(self._open)

    def handle(self, frame: Frame) -> Optional[Reply]:
        """A frame of a transfer: None for a chunk (no answer), the result for the commit."""
        h = frame.headers
        file_id = h.get(FILE_ID, "")
        if not _FILE_ID.match(file_id):
            return Reply(b"not a file frame: missing or malformed file-id header", code=400)
        try:
            size = int(h[FILE_SIZE])
            offset = int(h[FILE_OFFSET])
        except (KeyError, ValueError):
            return self._fail(file_id, b"file frame without a valid file-size and file-offset", 400)
        if h.get(FILE_LAST) == "1":
            return self._commit(file_id, size, h.get(FILE_CHUNKS, ""), h.get(FILE_NAME, ""))
        incoming = self._open.get(file_id)
        if incoming is None:
            self._drop_abandoned()
            if len(self._open) >= self.max_open:
                return Reply(b"too many files in transfer at once", code=503)
            part = os.path.join(self.directory, f".{file_id}.part")
            incoming = self._open[file_id] = _Incoming(
                os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), part, size
            )
        body = frame.body
        if incoming.error:
            return None
        if size != incoming.size or offset < 0 or offset + len(body) > size:
            incoming.error = f"chunk at {offset} of {len(body)} bytes does not fit a {incoming.size}-byte file"
            return None
        os.pwrite(incoming.fd, body, offset)
        incoming.last = time.monotonic()
        incoming.received += len(body)
        incoming.chunks += 1
        return None

    def _drop_abandoned(self) -> None:
        stale = time.monotonic() - self.abandon_after
        for file_id in [k for k, v in self._open.items() if v.last < stale]:
            incoming = self._open.pop(file_id)
            os.close(incoming.fd)
            os.unlink(incoming.part)
            self.failed += 1

    def _fail(self, file_id: str, message: bytes, code: int) -> Reply:
        incoming = self._open.pop(file_id, None)
        if incoming is not None:
            os.close(incoming.fd)
            os.unlink(incoming.part)
        self.failed += 1
        return Reply(message, code=code)

    def _commit(self, file_id: str, size: int, chunks: str, name: str) -> Reply:
        incoming = self._open.get(file_id)
        if incoming is None:
            if size or chunks != "0":
                return self._fail(file_id, b"no chunk of this file arrived (the link was lost?): send it again", 409)
            part = os.path.join(self.directory, f".{file_id}.part")
            incoming = self._open[file_id] = _Incoming(os.open(part, os.O_WRONLY | os.O_CREAT, 0o600), part, 0)
        problem = incoming.error
        if not problem and (incoming.received != size or str(incoming.chunks) != chunks):
            problem = f"{incoming.received} of {size} bytes in {incoming.chunks} of {chunks} chunks arrived"
        if problem:
            return self._fail(file_id, f"incomplete file: {problem}; send it again".encode(), 409)
        del self._open[file_id]
        os.close(incoming.fd)
        safe = os.path.basename(name.replace("\\", "/"))
        if safe in ("", ".", ".."):
            safe = file_id
        target = os.path.join(self.directory, safe)
        os.replace(incoming.part, target)
        digest = hashlib.sha256()
        with open(target, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.completed += 1
        return Reply(json.dumps({"name": safe, "size": size, "sha256": digest.hexdigest()}).encode())

    def close(self) -> None:
        """Drop every transfer not committed (their part files are removed)."""
        for file_id in list(self._open):
            incoming = self._open.pop(file_id)
            os.close(incoming.fd)
            os.unlink(incoming.part)
