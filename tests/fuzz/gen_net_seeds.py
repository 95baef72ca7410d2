#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/net_header (input format: see the header of
fuzz_net_header.cpp). Usage: gen_net_seeds.py OUT_DIR"""
import struct
import sys
from pathlib import Path

DATA = 0x1000
VERSION_1, CSUM, HOST_TSO4, HOST_TSO6, HOST_ECN, HOST_UFO, MQ = 1 << 32, 1, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 22
ALL = VERSION_1 | CSUM | HOST_TSO4 | HOST_TSO6 | HOST_ECN | HOST_UFO | MQ


def hdr(flags=0, gso=0, hdr_len=0, gso_size=0, cs=0, co=0, nb=0):
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, cs, co, nb)


def raw(features, mode, segs, data):
    out = struct.pack("<QBB", features, mode, len(segs))
    for addr, length, write in segs:
        out += struct.pack("<IHB", addr, length, 1 if write else 0)
    return out + data


def ring(features, mode, descs, data):
    out = struct.pack("<QBB", features, mode | 1, len(descs))
    for addr, length, flags, nxt in descs:
        out += struct.pack("<QIHH", addr, length, flags, nxt)
    return out + data


frame = bytes(range(64))
seeds = {
    "tx_plain": raw(ALL, 0, [(DATA, 12, False), (DATA + 12, 64, False)], hdr() + frame),
    "tx_one_buffer": raw(ALL, 0, [(DATA, 76, False)], hdr() + frame),
    "tx_split_header": raw(ALL, 0, [(DATA, 5, False), (DATA + 5, 7, False), (DATA + 12, 64, False)],
                           hdr() + frame),
    "tx_csum": raw(ALL, 0, [(DATA, 76, False)], hdr(1, 0, 0, 0, 34, 16) + frame),
    "tx_csum_out": raw(ALL, 0, [(DATA, 76, False)], hdr(1, 0, 0, 0, 60, 16) + frame),
    "tx_tso4": raw(ALL, 0, [(DATA, 76, False)], hdr(1, 1, 54, 1448, 34, 16) + frame),
    "tx_tso6_ecn": raw(ALL, 0, [(DATA, 76, False)], hdr(1, 0x84, 74, 1428, 54, 16) + frame),
    "tx_ufo_not_negotiated": raw(VERSION_1 | CSUM, 0, [(DATA, 76, False)], hdr(1, 3, 42, 1400, 34, 6) + frame),
    "tx_short": raw(ALL, 0, [(DATA, 8, False)], hdr()),
    "tx_outside": raw(ALL, 0, [(0xffff0, 600, False)], b""),
    "ctrl_mq_ok": raw(ALL, 0x10 | (3 << 1), [(DATA, 4, False), (DATA + 16, 1, True)],
                      bytes([4, 0, 2, 0])),
    "ctrl_mq_too_many": raw(ALL, 0x10 | (1 << 1), [(DATA, 4, False), (DATA + 16, 1, True)],
                            bytes([4, 0, 9, 0])),
    "ctrl_mq_split": raw(ALL, 0x10 | (3 << 1), [(DATA, 1, False), (DATA + 1, 1, False), (DATA + 2, 1, False),
                                               (DATA + 3, 1, False), (DATA + 16, 1, True)],
                         bytes([4, 0, 3, 0])),
    "ctrl_unknown": raw(ALL, 0x10, [(DATA, 2, False), (DATA + 16, 1, True)], bytes([0, 1])),
    "ctrl_no_ack": raw(ALL, 0x10 | (3 << 1), [(DATA, 4, False)], bytes([4, 0, 2, 0])),
    "ring_tx": ring(ALL, 0, [(DATA, 12, 1, 1), (DATA + 12, 64, 0, 0)], hdr() + frame),
    "ring_ctrl": ring(ALL, 0x10 | (3 << 1), [(DATA, 4, 1, 1), (DATA + 16, 1, 2, 0)], bytes([4, 0, 2, 0])),
    "ring_indirect": ring(ALL, 0, [(DATA + 0x100, 32, 4, 0)],
                          hdr() + frame + bytes(0x100 - 76) +
                          struct.pack("<QIHH", DATA, 12, 1, 1) + struct.pack("<QIHH", DATA + 12, 64, 0, 0)),
}

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for name, data in seeds.items():
    (out / name).write_bytes(data)
