"""Sans-IO NexusKit BinaryProtocol: frames, header block, codecs, messages.

Nothing in this package does I/O or reads the time (layer L1).

Example::

    >>> from nexus_green.protocol import Frame, FrameDecoder, encode_frame
    >>> FrameDecoder().feed(encode_frame(Frame(qid=1, body=b"x")))[0].body
    b'x'
"""

from .frames import (
    CODE_OK,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    HEARTBEAT_FID,
    TAG,
    TP_GZIP,
    TP_HEARTBEAT,
    VERSION,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_request,
    heartbeat_frame,
)
from .headers import decode_header_block, encode_header_block
from .messages import Request, Response

__all__ = [
    "CODE_OK",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "HEARTBEAT_FID",
    "TAG",
    "TP_GZIP",
    "TP_HEARTBEAT",
    "VERSION",
    "Frame",
    "FrameDecoder",
    "encode_frame",
    "encode_request",
    "heartbeat_frame",
    "encode_header_block",
    "decode_header_block",
    "Request",
    "Response",
]
