#!/usr/bin/env python3
"""Writes the structured seeds of corpus/relay/ (see src/fuzzing.rs for the input format)."""
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "relay")


def msg(request, flags, payload=b"", fds=0):
    # op 0: request, flags, length, fd count, payload
    return bytes([0, request, flags, len(payload), fds]) + payload


def lie(size, request, short):
    # op 1: a header whose size lies, then `short` payload bytes
    return bytes([1]) + struct.pack("<I", size) + bytes([request, short]) + bytes(short)


def many_fds(n):
    return bytes([2, n])


def raw(data):
    return bytes([3, len(data)]) + data


def u64(v):
    return struct.pack("<Q", v)


def state(index, num):
    return struct.pack("<II", index, num)


def config(offset, size, data):
    return struct.pack("<III", offset, size, 0) + bytes(data)


SEEDS = {
    "probe": msg(3, 1) + msg(1, 1) + msg(15, 1) + msg(16, 1, u64(0x201)) + msg(2, 1, u64(1 << 32)),
    "backend-channel": msg(16, 1, u64(0x209)) + msg(21, 9, b"", 1),
    "uml-reload": (msg(2, 9, u64(1 << 32)) + msg(13, 9, u64(2), 1) + msg(8, 9, state(2, 256))
                   + msg(10, 9, state(2, 0)) + msg(12, 9, u64(2), 1)
                   + msg(2, 9, u64(1 << 32)) + msg(13, 9, u64(2), 1) + msg(12, 9, u64(2), 1)),
    "bit30-rekick": (msg(2, 1, u64((1 << 32) | (1 << 30))) + msg(12, 1, u64(0), 1)
                     + msg(18, 1, state(0, 1)) + msg(12, 1, u64(0), 1) + msg(11, 1, state(0, 0))),
    "kick-nofd": msg(12, 1, u64(0x100)) + msg(12, 1, u64(0x1ff), 2),
    "config-outside": (msg(24, 1, config(0xffe, 4, b"abcd")) + msg(25, 9, config(0, 0, b""))
                       + msg(24, 1, config(0xffffffff, 4, b"abcd")) + msg(24, 1, b"\x01\x02")),
    "config-inside": msg(24, 1, config(0, 8, bytes(8))) + msg(25, 9, config(4, 4, u64(5)[:4])),
    "padded-mem-table": msg(5, 9, struct.pack("<II", 1, 0) + bytes(64), 1),
    "reset": msg(4, 1) + msg(34, 1) + msg(10, 1, state(0, 0)),
    "size-lies-huge": msg(1, 1) + lie(0xFFFFFFFF, 5, 10),
    "size-lies-short": lie(100, 24, 20),
    "too-many-fds": msg(1, 1) + many_fds(40),
    "max-fds": many_fds(32) + msg(1, 1),
    "cut-header": msg(1, 1) + raw(b"\x01\x00\x00"),
    "reply-flag": msg(21, 5, b"", 1) + msg(2, 4, u64(0)),
    "empty": b"",
}

os.makedirs(HERE, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(HERE, "seed-" + name), "wb") as f:
        f.write(data)
print(f"{len(SEEDS)} seeds in {HERE}")
