"""Files as frames: the header convention of ``send_file`` (docs/protocol.md, "Files").

A file travels to one Fid as a run of request frames tied together by header
entries (so it needs the header block extension: strict NexusKit peers cannot
take it):

* data chunks, in file order, each at most ``chunk_size`` bytes of the file,
  headers ``file-id`` (32 hex digits, one per transfer), ``file-offset``,
  ``file-size`` (the whole file's) and ``file-name``. Nobody waits for an
  answer to a chunk (the receiver sends none);
* then one commit frame, empty, with ``file-last: 1`` and ``file-chunks`` (how
  many data chunks came before it). Its answer is the transfer's result: 200
  when the receiver holds every byte, an error code otherwise.

Frames of other requests may travel between the chunks on a multiplexed
connection; a receiver keys the chunks by ``file-id`` and writes each at its
offset.

Example::

    >>> chunk_offsets(10, 4)
    [(0, 4), (4, 4), (8, 2)]
    >>> chunk_offsets(0, 4)
    []
"""

from __future__ import annotations

__all__ = [
    "FILE_ID",
    "FILE_OFFSET",
    "FILE_SIZE",
    "FILE_NAME",
    "FILE_LAST",
    "FILE_CHUNKS",
    "DEFAULT_CHUNK_SIZE",
    "chunk_offsets",
]

FILE_ID = "file-id"
FILE_OFFSET = "file-offset"
FILE_SIZE = "file-size"
FILE_NAME = "file-name"
FILE_LAST = "file-last"
FILE_CHUNKS = "file-chunks"
DEFAULT_CHUNK_SIZE = 1024 * 1024


def chunk_offsets(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """``(offset, count)`` of each data chunk of a ``size``-byte file.

    Example::

        >>> chunk_offsets(5, 5)
        [(0, 5)]
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size}")
    return [(off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)]
