#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/blk_request (input format: see the header of
fuzz_blk_request.cpp). Usage: gen_blk_seeds.py OUT_DIR"""
import struct
import sys
from pathlib import Path

IN, OUT, FLUSH, GET_ID, DISCARD, WZ = 0, 1, 4, 8, 11, 13
RO, DISC, WZF, TINY, TINYIOV, CAPMOD = 1, 2, 4, 8, 16, 32
BLOB_END = 0x1000  # offset inside the blob area past the headers


def hdr(t, sector):
    return struct.pack("<IIQ", t, 0, sector)


def seg_blob(off, length, write=False):  # mode 0
    return bytes([int(write)]) + struct.pack("<HH", off, length)


def seg_r1(off, length, write=False):  # mode 1
    return bytes([int(write) | 2]) + struct.pack("<HH", off, length)


def seg_raw(addr, length, write=False):  # mode 2
    return bytes([int(write) | 4]) + struct.pack("<QI", addr, length)


def seg_end(back, length, write=False):  # mode 3
    return bytes([int(write) | 6, back]) + struct.pack("<H", length)


def seed(flags, capacity, segs, blob):
    return bytes([flags]) + struct.pack("<Q", capacity) + bytes([len(segs)]) + b"".join(segs) + blob


def dwz(sector, n, flags=0):
    return struct.pack("<QII", sector, n, flags)


seeds = {
    "read": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 4096, True), seg_r1(4096, 1, True)],
                 hdr(IN, 8)),
    "write": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 1024), seg_r1(4096, 1, True)],
                  hdr(OUT, 2046)),
    "write_ro": seed(RO, 2048, [seg_blob(0, 16), seg_r1(0, 512), seg_r1(4096, 1, True)],
                     hdr(OUT, 0)),
    "read_beyond": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 1024, True), seg_r1(4096, 1, True)],
                        hdr(IN, 2047)),
    "read_wrap": seed(0, ~0 & 0xFFFFFFFFFFFFFFFF,
                      [seg_blob(0, 16), seg_r1(0, 1024, True), seg_r1(4096, 1, True)],
                      hdr(IN, 0xFFFFFFFFFFFFFFFE)),
    "split_header": seed(0, 2048, [seg_blob(0, 8), seg_blob(8, 8 + 512), seg_r1(0, 1, True)],
                         hdr(OUT, 4) + bytes(512)),
    "status_in_data": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 513, True)], hdr(IN, 4)),
    "no_status": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 512)], hdr(OUT, 0)),
    "short_header": seed(0, 2048, [seg_blob(0, 8), seg_r1(0, 1, True)], hdr(IN, 0)),
    "flush": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 1, True)], hdr(FLUSH, 0)),
    "get_id": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 20, True), seg_r1(20, 1, True)],
                   hdr(GET_ID, 0)),
    "get_id_short": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 6, True)], hdr(GET_ID, 0)),
    "discard": seed(DISC | WZF, 2048, [seg_blob(0, 48), seg_r1(0, 1, True)],
                    hdr(DISCARD, 0) + dwz(8, 8) + dwz(2040, 8)),
    "discard_unmap": seed(DISC, 2048, [seg_blob(0, 32), seg_r1(0, 1, True)],
                          hdr(DISCARD, 0) + dwz(8, 8, 1)),
    "write_zeroes_tiny": seed(DISC | WZF | TINY, 2048, [seg_blob(0, 48), seg_r1(0, 1, True)],
                              hdr(WZ, 0) + dwz(0, 8, 1) + dwz(16, 16)),
    "write_zeroes_big": seed(DISC | WZF | TINY, 2048, [seg_blob(0, 48), seg_r1(0, 1, True)],
                             hdr(WZ, 0) + dwz(0, 8, 1) + dwz(100, 17)),
    "discard_not_negotiated": seed(0, 2048, [seg_blob(0, 32), seg_r1(0, 1, True)],
                                   hdr(DISCARD, 0) + dwz(8, 8)),
    "many_segments": seed(TINYIOV, 2048,
                          [seg_blob(0, 16)] + [seg_r1(512 * i, 512, True) for i in range(8)]
                          + [seg_r1(8192, 1, True)], hdr(IN, 0)),
    "outside_memory": seed(0, 2048, [seg_blob(0, 16), seg_raw(0x80000, 512, True),
                                     seg_r1(0, 1, True)], hdr(IN, 0)),
    "wrapping_address": seed(0, 2048, [seg_blob(0, 16), seg_raw(0xFFFFFFFFFFFFFE00, 0x400, True),
                                       seg_r1(0, 1, True)], hdr(IN, 0)),
    "straddle_end": seed(CAPMOD, 5000, [seg_blob(0, 16), seg_end(16, 512, True)], hdr(IN, 1)),
    "unknown": seed(0, 2048, [seg_blob(0, 16), seg_r1(0, 1, True)], hdr(99, 0)),
}

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for name, data in seeds.items():
    (out / name).write_bytes(data)
