#!/usr/bin/env python3
"""Seeds for fuzz_vhost_user_backend: message sequences in the target's op encoding (see the
.cpp): a QEMU-like start of both queue pairs, the same with an inflight area, a reset in the
middle, and rings outside the memory table. Writes corpus/vhost_user_backend/*."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "vhost_user_backend")


def op(code, q=0, *operands):
    return bytes([code, q]) + b"".join(operands)


def u8(v):
    return struct.pack("<B", v)


def u16(v):
    return struct.pack("<H", v)


def u64(v):
    return struct.pack("<Q", v)


def ring(q, offset):
    # desc, used, avail inside region 0 (selector < 200 with an offset)
    addr = lambda o: u8(0) + u16(o)
    return op(6, q, addr(offset), addr(offset + 0x1000), addr(offset + 0x800))


def start(q, offset, enable=True):
    s = op(4, q, u8(6))          # 64 entries
    s += op(5, q, u16(0))
    s += ring(q, offset)
    s += op(8, q) + op(7, q)     # call, kick
    if enable:
        s += op(9, q, u8(1), u8(1))
    return s


def handshake(mem_sel=0):
    return (op(0) + op(17) + op(2, 0, u64(0xFFFFFFFFFFFFFFFF)) +
            op(1, 0, u64(0xFFFFFFFFFFFFFFFF), u8(1)) + op(3, 0, u8(0), u8(mem_sel), u8(1)))


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        "qemu-like-two-pairs": handshake() + b"".join(start(q, 0x2000 * (q + 1)) for q in range(4)) + op(10, 0),
        "inflight": handshake() + op(13, 1, u8(6)) + op(14, 0, u8(3), u8(6), u8(0)) + start(0, 0x2000) + start(1, 0x6000),
        "reset-midway": handshake() + start(0, 0x2000) + op(12) + start(0, 0x2000) + op(10, 0),
        "ring-outside-memory": handshake() + op(4, 0, u8(6)) + op(6, 0, u8(255) + u64(1 << 40), u8(0) + u16(0), u8(0) + u16(0x100)) + op(7, 0) + op(9, 0, u8(1), u8(1)),
        "region-beyond-file": handshake(mem_sel=250) + start(0, 0x2000),
        "disable-then-base": handshake() + start(0, 0x2000) + op(9, 0, u8(0), u8(1)) + op(10, 0) + op(5, 0, u16(7)) + op(9, 0, u8(1), u8(1)),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
