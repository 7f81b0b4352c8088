"""Reading a job's log for the server, in bounded pieces: its end, a chunk from an offset, a
page of whole lines before or after an offset (the viewer), a live tail, or the whole log as a
stream. Every read opens the log through `BundleFile` (never through a link, never a FIFO)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional, Tuple

from pikaci.server.access import LOG_CAP, STREAM_CHUNK, ApiError, BundleFile


def open_log(log: BundleFile) -> BinaryIO:
    """Open a log for reading; a link, FIFO or device in its place is refused, never followed."""
    try:
        return log.open()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ApiError(404, f"cannot read {log.name}: {exc.strerror}") from None


@dataclass(frozen=True)
class LogEnd:
    text: str
    omitted_bytes: int  # cut from the start: the log is longer than LOG_CAP


def read_log_end(path: BundleFile) -> Optional[LogEnd]:
    """The log (its last LOG_CAP bytes when longer); None when it was never created."""
    try:
        with open_log(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(0, size - LOG_CAP)
            handle.seek(start)
            return LogEnd(handle.read(LOG_CAP).decode("utf-8", "replace"), start)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ApiError(404, f"cannot read {path.name}: {exc.strerror}") from None


@dataclass(frozen=True)
class LogPage:
    start: int  # the first byte shown
    end: int  # the byte after the last one shown: where the next page continues
    text: str
    size: int
    # nothing complete is left after `end`: at most a last line still being written, held back
    caught_up: bool = True


def read_log_chunk(path: BundleFile, offset: int, limit: int) -> LogPage:
    """`limit` bytes from `offset`, ending on a character boundary; a missing log is empty."""
    try:
        with open_log(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset > size:
                raise ApiError(400, f"offset {offset} is past the end of the log ({size} bytes)")
            handle.seek(offset)
            chunk = handle.read(limit)
    except FileNotFoundError:
        if offset:
            raise ApiError(400, f"offset {offset} is past the end of the log (0 bytes)") from None
        return LogPage(0, 0, "", 0)
    except OSError as exc:
        raise ApiError(404, f"cannot read {path.name}: {exc.strerror}") from None
    text, used = decode_prefix(chunk)
    size = max(size, offset + len(chunk))
    return LogPage(offset, offset + used, text, size, caught_up=offset + used >= size)


def _skip_partial_line(before: bytes, raw: bytes) -> int:
    """How many bytes of `raw` belong to a line that started before it (0 when at a line start,
    or when the line fills all of `raw`: a long line is shown cut rather than not at all)."""
    if before in (b"", b"\n"):
        return 0
    cut = raw.find(b"\n")
    return cut + 1 if cut != -1 and cut + 1 < len(raw) else 0


def read_log_page(
    path: BundleFile, offset: int, limit: int, align: bool = True, hold_partial: bool = False
) -> LogPage:
    """At most `limit` bytes from `offset`, cut after the last newline unless no newline is in
    them (one line longer than `limit`) or the log ends there.

    `align`: a page asked to start inside a line starts at the next line instead. Pages chained by
    `end` (with align=False) show every byte once. `hold_partial`: a last line without its
    newline yet is held back (a live tail renders whole lines only).
    """
    try:
        with open_log(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = min(offset, size)
            first = max(0, offset - 1)
            handle.seek(first)
            raw = handle.read(limit + (offset - first))
    except FileNotFoundError:
        return LogPage(0, 0, "", 0)
    size = max(size, first + len(raw))
    before, raw = raw[: offset - first], raw[offset - first :]
    if align:
        skip = _skip_partial_line(before, raw)
        raw, offset = raw[skip:], offset + skip
    # caught up: only a line still being written (held back) may remain after the page
    reaches_end = offset + len(raw) >= size
    if (not reaches_end or hold_partial) and b"\n" in raw:
        raw = raw[: raw.rfind(b"\n") + 1]
    elif hold_partial and reaches_end and len(raw) < limit:
        raw = b""  # only a line still being written: wait for its newline
    text, used = decode_prefix(raw)
    return LogPage(offset, offset + used, text, size, caught_up=reaches_end)


def read_log_page_before(path: BundleFile, end: int, limit: int) -> LogPage:
    """The page that ends at `end`: at most `limit` bytes before it, from a line start when one
    is in them. Chaining by `start` walks back to the start of the log without a gap."""
    try:
        with open_log(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            end = min(end, size)
            start = max(0, end - limit)
            first = max(0, start - 1)
            handle.seek(first)
            raw = handle.read(end - first)
    except FileNotFoundError:
        return LogPage(0, 0, "", 0)
    before, raw = raw[: start - first], raw[start - first :]
    skip = _skip_partial_line(before, raw)
    text = raw[skip:].decode("utf-8", "replace")
    return LogPage(start + skip, end, text, size, caught_up=end >= size)


def decode_prefix(chunk: bytes) -> Tuple[str, int]:
    """Decode `chunk`, leaving a UTF-8 sequence cut by the chunk's end for the next call."""
    try:
        return chunk.decode("utf-8"), len(chunk)
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.start >= len(chunk) - 3 and exc.start:
            return chunk[: exc.start].decode("utf-8", "replace"), exc.start
        return chunk.decode("utf-8", "replace"), len(chunk)


def stream_log(path: BundleFile) -> Tuple[int, Iterator[bytes]]:
    """The log's size now and its bytes up to that size, read STREAM_CHUNK at a time.

    A running job's log keeps growing; the response ends at the size it had when it was opened,
    so Content-Length stays true and memory stays at one chunk whatever the log's size.
    """
    handle = open_log(path)
    size = os.fstat(handle.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        with handle:
            left = size
            while left > 0:
                data = handle.read(min(STREAM_CHUNK, left))
                if not data:
                    return
                left -= len(data)
                yield data

    return size, chunks()
