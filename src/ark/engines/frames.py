"""The framed protocol between ARK and its engine workers.

A frame is a 4-byte big-endian length followed by that many bytes of one JSON object. Every frame
carries an ``id`` (the request it belongs to; 0 for the worker's greeting) and, from ARK, an ``op``
or, from the worker, a ``type``. The worker reads with a blocking socket; ARK cuts frames from whatever
each read brings (:class:`Parser`, fed by an asyncio.Protocol). What ARK reads is checked here, before
anything else looks at it: a worker is native code ARK does not own, and a frame it garbles must cost
that worker, never the gateway.

    ARK -> worker   {"id", "op": "load" | "chat" | "complete" | "embed" | "cancel" | "stats", ...}
    worker -> ARK   {"id", "type": "hello" | "loaded" | "chunk" | "done" | "error" | "stats", "data"?, ...}
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

Frame = dict[str, Any]

HEADER = struct.Struct(">I")
# An embedding batch of 2048 inputs x 4096 floats is ~170 MB as JSON: room for that, not for garbage.
MAX_FRAME = 256 * 2**20
FROM_WORKER = frozenset({"hello", "loaded", "chunk", "done", "error", "stats"})


class FrameError(Exception):
    """A frame that breaks the protocol: too long, not JSON, not an object, or without its fields."""


def encode(frame: Frame) -> bytes:
    payload = orjson.dumps(frame)
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> Frame:
    try:
        frame = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"not JSON: {exc}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("id"), int):
        raise FrameError(f"not a frame object with an integer id: {payload[:80]!r}")
    return frame


def check_from_worker(frame: Frame) -> Frame:
    """What ARK accepts from a worker: a known type, and a JSON object as data where one is carried."""
    kind = frame.get("type")
    if kind not in FROM_WORKER:
        raise FrameError(f"unknown frame type {kind!r}")
    if kind in ("hello", "chunk", "done", "stats") and not isinstance(frame.get("data"), dict):
        raise FrameError(f"a {kind} frame without an object as data")
    if kind == "error" and not isinstance(frame.get("message"), str):
        raise FrameError("an error frame without a message")
    return frame


class Parser:
    """ARK's side: frames cut from the bytes of a socket as they arrive, however the reads split them."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """The whole frames ``data`` completes, checked; raises FrameError at the first bad one."""
        buffer = self._buffer
        buffer += data
        found: list[Frame] = []
        at = 0
        while len(buffer) - at >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, at)
            if length > MAX_FRAME:
                raise FrameError(f"a frame of {length} bytes (at most {MAX_FRAME})")
            end = at + HEADER.size + length
            if len(buffer) < end:
                break
            found.append(check_from_worker(decode(bytes(buffer[at + HEADER.size : end]))))
            at = end
        del buffer[:at]
        return found

    def end(self) -> None:
        """The stream ended: fine between frames, a FrameError inside one."""
        if self._buffer:
            where = "header" if len(self._buffer) < HEADER.size else "frame"
            raise FrameError(f"the stream ended inside a {where}")


def read_blocking(sock: socket.socket) -> Frame | None:
    """The worker's side: the next frame from ARK, None when ARK closed the socket."""
    head = _exactly(sock, HEADER.size)
    if head is None:
        return None
    (length,) = HEADER.unpack(head)
    if length > MAX_FRAME:
        raise FrameError(f"a frame of {length} bytes (at most {MAX_FRAME})")
    payload = _exactly(sock, length)
    if payload is None:
        raise FrameError("the stream ended inside a frame")
    return decode(payload)


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            if chunks:
                raise FrameError("the stream ended inside a frame")
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
