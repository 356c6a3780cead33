#!/usr/bin/env python3
"""Writes the structured seed inputs of corpus/queues/ (see src/fuzzing.rs for the format)."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "corpus", "queues")
STATS, REPORTING, INIT_REPORTED, INIT_ON_INFLATE, POISON, WILLNEED = 1, 2, 4, 8, 16, 128
W, N, I = 2, 1, 4  # descriptor flags: write, next, indirect
B, C = 0x4000, 0xC000  # region B and region C guest addresses


class Seed:
    def __init__(self, flags, poison=0, policy=0, size_exp=4):
        self.head = [flags, poison, policy, size_exp]
        self.ops = []
        self.mem = bytearray()

    def put(self, addr, data):
        end = addr + len(data)
        if end > len(self.mem):
            self.mem.extend(bytes(end - len(self.mem)))
        self.mem[addr:end] = data

    def desc(self, qi, i, addr, length, flags, nxt=0):
        self.put(qi * 0x400 + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def avail(self, qi, slot, head):
        self.put(qi * 0x400 + 0x100 + 4 + 2 * slot, struct.pack("<H", head))

    def op(self, kind, qi, arg=0):
        self.ops.append((kind, qi, arg))

    def bytes(self):
        ops = b"".join(bytes(o) for o in self.ops)
        return bytes(self.head + [len(self.ops)]) + ops + bytes(self.mem)


def roles(flags):
    r = ["inflate", "deflate"]
    if flags & STATS:
        r.append("stats")
    if flags & REPORTING:
        r.append("reporting")
    return r


def seeds():
    out = {}
    f = REPORTING | INIT_REPORTED
    s = Seed(f)
    q = roles(f).index("reporting")
    s.desc(q, 0, C, 0x4000, W)
    s.avail(q, 0, 0)
    s.op(0, q)
    out["report-one"] = s

    s = Seed(f)
    for i in range(3):
        s.desc(q, i, C + 0x3000 * i, 0x2000, W | (N if i < 2 else 0), i + 1)
    s.avail(q, 0, 0)
    s.op(0, q)
    out["report-chain"] = s

    s = Seed(f, policy=1)  # 16 KiB host pages in region C
    s.desc(q, 0, C + 0x1000, 0x1000, W)
    s.desc(q, 1, C, 0x8000, W)
    s.avail(q, 0, 0)
    s.avail(q, 1, 1)
    s.op(0, q)
    s.op(0, q)
    out["report-huge"] = s

    s = Seed(f)
    s.desc(q, 0, 0x7000, 0x2000, W)  # crosses into the hole
    s.desc(q, 1, 0xfffffffffffff000, 0x2000, W)  # overflows
    s.desc(q, 2, C, 0x1001, W)  # odd
    s.desc(q, 3, C, 0x1000, 0)  # readable
    for i in range(4):
        s.avail(q, i, i)
        s.op(0, q)
    out["report-hostile"] = s

    s = Seed(f)
    s.desc(q, 0, C, 0x1000, W | N, 1)
    s.desc(q, 1, C + 0x1000, 0x1000, W | N, 0)  # loop
    s.avail(q, 0, 0)
    s.op(0, q)
    out["report-loop"] = s

    s = Seed(f)
    s.desc(q, 0, 0x1400, 32, I)
    s.put(0x1400, struct.pack("<QIHH", C, 0x1000, W | N, 1) + struct.pack("<QIHH", C + 0x1000, 0x1000, W, 0))
    s.avail(q, 0, 0)
    s.op(0, q)
    out["report-indirect"] = s

    s = Seed(f | POISON, poison=1)
    s.desc(q, 0, C, 0x4000, W)
    s.avail(q, 0, 0)
    s.op(0, q)
    out["report-poison"] = s

    s = Seed(f, policy=0x80)  # failing discards
    s.desc(q, 0, C, 0x4000, W)
    s.avail(q, 0, 0)
    s.op(0, q)
    out["report-fail"] = s

    f = INIT_ON_INFLATE
    s = Seed(f)
    pfns = [C >> 12, (C >> 12) + 1, (B >> 12) + 3, (C >> 12) + 1, 0x9, 0xFFFFFFFF]
    s.put(0x1000, struct.pack("<%dI" % len(pfns), *pfns))
    s.desc(0, 0, 0x1000, 4 * len(pfns), N, 1)
    s.desc(0, 1, 0x1800, 1, W)
    s.avail(0, 0, 0)
    s.op(0, 0)
    out["inflate-bitmap"] = s

    s = Seed(f)
    s.put(0x1000, struct.pack("<9I", *range(C >> 12, (C >> 12) + 9)))
    s.desc(0, 0, 0x1000, 36, N, 1)
    s.desc(0, 1, 0x1800, 1, W)  # too short
    s.desc(0, 2, 0x1000, 36, N, 3)
    s.desc(0, 3, C + 0x1000, 2, W)  # bitmap inside an inflated page
    s.avail(0, 0, 0)
    s.avail(0, 1, 2)
    s.op(0, 0)
    s.op(0, 0)
    out["inflate-short-and-self"] = s

    s = Seed(f, policy=1)
    s.put(0x1000, struct.pack("<8I", *range(C >> 12, (C >> 12) + 8)))
    s.desc(0, 0, 0x1000, 32, N, 1)
    s.desc(0, 1, 0x1800, 1, W)
    s.avail(0, 0, 0)
    s.op(0, 0)
    out["inflate-huge"] = s

    s = Seed(WILLNEED)
    s.put(0x1000, struct.pack("<3I", C >> 12, (C >> 12) + 1, 0xA))
    s.desc(1, 0, 0x1000, 12, 0)
    s.avail(1, 0, 0)
    s.op(0, 1)
    out["deflate"] = s

    f = STATS | REPORTING | INIT_REPORTED
    s = Seed(f)
    entries = b"".join(struct.pack("<HQ", t, 100 + t) for t in (0, 4, 5, 16, 15))
    s.put(0x1000, entries + b"\x01\x02")
    s.desc(2, 0, 0x1000, len(entries) + 2, 0)
    s.desc(2, 1, 0x1000, len(entries), 0)
    s.avail(2, 0, 0)
    s.avail(2, 1, 1)
    s.op(0, 2)
    s.op(0, 2)
    s.op(2, 2, 0)
    out["stats"] = s

    s = Seed(STATS | POISON)
    s.op(3, 4, 4)
    s.op(3, 12, 4)
    s.op(3, 0, 4)
    s.op(3, 2, 3)
    out["config"] = s

    f = STATS | REPORTING | INIT_REPORTED | INIT_ON_INFLATE
    s = Seed(f, size_exp=2)
    q = roles(f).index("reporting")
    for i in range(4):
        s.desc(q, i, C + 0x1000 * i, 0x1000, W)
        s.avail(q, i, i)
    s.op(2, q, 3)
    s.op(0, q)
    s.op(2, q, 19)  # avail index far ahead
    out["mixed-wrap"] = s
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, seed in seeds().items():
        with open(os.path.join(OUT, "seed-" + name), "wb") as f:
            f.write(seed.bytes())


if __name__ == "__main__":
    main()
