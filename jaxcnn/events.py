"""TensorBoard event files without TensorFlow: the scalars of every epoch.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, the data, masked
CRC-32C of the data), each an ``Event`` protocol buffer; the few fields written here are encoded
by hand (field numbers from TensorFlow's ``event.proto`` and ``summary.proto``):

    Event      1 wall_time (double), 2 step (int64), 3 file_version (string),
               5 summary (Summary), 7 session_log (SessionLog)
    Summary    1 value (repeated Value);  Value: 1 tag (string), 2 simple_value (float)
    SessionLog 1 status (enum, START = 1)

Each session of a run writes a file of its own that starts with a SessionLog START at the step
it resumes from: TensorBoard then hides the events of earlier files at that step and later ones
(written after the checkpoint the run resumed from), so a resumed run never shows a step twice.
"""

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecords."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, nested messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, wall_time: float, *, file_version: str | None = None,
          scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
    """One serialised ``Event``."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                          for tag, value in scalars.items())
        out += _field(5, values)
    if session_start:
        out += _field(7, b"\x08\x01")
    return out


class EventFile:
    """One session's event file in ``directory``: ``events.out.tfevents.<time>.<host>``.

    ``start_step`` is the first step this session writes: events of earlier sessions from that
    step on are hidden by TensorBoard.
    """

    def __init__(self, directory: str, start_step: int):
        now = time.time()
        name = f"events.out.tfevents.{now:.6f}.{socket.gethostname()}"
        self.path = os.path.join(directory, name)
        with open(self.path, "xb") as f:
            f.write(tfrecord(event(start_step, now, file_version="brain.Event:2")))
            f.write(tfrecord(event(start_step, now, session_start=True)))

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Appends one event holding ``scalars`` ({tag: value}) at ``step``."""
        with open(self.path, "ab") as f:
            f.write(tfrecord(event(step, time.time(), scalars=scalars)))
            f.flush()
            os.fsync(f.fileno())
