#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/split_queue (input format: see the header of
fuzz_split_queue.cpp). Usage: gen_seeds.py OUT_DIR"""
import struct
import sys
from pathlib import Path

NEXT, WRITE, INDIRECT = 1, 2, 4
IND_GPA = 0x20000
DATA = 0x10000  # buffers in region 0
R1 = 1024 * 1024


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def seed(log2size, flags, descs, avail, avail_idx, used_event=0, avail_flags=0, ind=(), ops=b""):
    out = bytes([log2size, flags, len(descs)]) + b"".join(descs)
    out += bytes([len(avail)]) + b"".join(struct.pack("<H", a) for a in avail)
    out += struct.pack("<HHH", avail_flags, avail_idx, used_event)
    out += bytes([len(ind)]) + b"".join(ind)
    return out + ops


POP, PUSH_LAST, NEEDS, ENABLE, DISABLE, RESET = b"\x00", b"\x03", b"\x04", b"\x05", b"\x06", b"\x0c"


def push(head, n):
    return b"\x02" + struct.pack("<HI", head, n)


def push_last(n):
    return PUSH_LAST + struct.pack("<I", n)


def avail_idx(v):
    return b"\x07" + struct.pack("<H", v)


seeds = {
    # one readable + one writable buffer, popped and returned, then notification decisions
    "simple_chain": seed(3, 0, [desc(DATA, 64, NEXT, 1), desc(DATA + 64, 128, WRITE)], [0], 1,
                         ops=POP + push_last(128) + NEEDS + POP + NEEDS),
    # EVENT_IDX: used_event 0 -> notify after the first push; avail_event updates
    "event_idx": seed(4, 1, [desc(DATA, 16, WRITE), desc(DATA + 16, 16, WRITE)], [0, 1], 2,
                      used_event=0,
                      ops=DISABLE + POP + push_last(16) + NEEDS + ENABLE + POP + push_last(16)
                      + NEEDS + avail_idx(3) + ENABLE + b"\x0a\x00\x05\x00" + NEEDS),
    # EVENT_IDX with notifications suppressed by used_event far away
    "event_idx_suppressed": seed(2, 1, [desc(DATA, 8)], [0], 1, used_event=100,
                                 ops=POP + push_last(0) + NEEDS + push(0, 4) + NEEDS),
    # NO_INTERRUPT flag without EVENT_IDX
    "no_interrupt": seed(2, 0, [desc(DATA, 8)], [0], 1, avail_flags=1,
                         ops=POP + push_last(0) + NEEDS + ENABLE + DISABLE),
    # indirect chain: head descriptor points to a 3-entry table
    "indirect": seed(3, 2, [desc(IND_GPA, 48, INDIRECT)], [0], 1,
                     ind=[desc(DATA, 32, NEXT, 1), desc(DATA + 32, 32, NEXT, 2),
                          desc(DATA + 64, 512, WRITE)],
                     ops=POP + push_last(512) + POP),
    # direct descriptor chained to an indirect one
    "direct_then_indirect": seed(3, 3, [desc(DATA, 16, NEXT, 1), desc(IND_GPA, 32, INDIRECT)],
                                 [0], 1, ind=[desc(DATA + 16, 16), desc(DATA + 32, 16, WRITE)],
                                 ops=POP + push_last(16) + NEEDS),
    # INDIRECT without the feature: fault, stays broken, reset recovers
    "indirect_not_negotiated": seed(3, 0, [desc(IND_GPA, 16, INDIRECT)], [0], 1,
                                    ind=[desc(DATA, 16)],
                                    ops=POP + POP + push(0, 0) + RESET + POP),
    # nested indirect
    "nested_indirect": seed(3, 2, [desc(IND_GPA, 16, INDIRECT)], [0], 1,
                            ind=[desc(IND_GPA, 16, INDIRECT)], ops=POP + POP),
    # indirect table with a loop
    "indirect_loop": seed(3, 2, [desc(IND_GPA, 32, INDIRECT)], [0], 1,
                          ind=[desc(DATA, 1, NEXT, 1), desc(DATA, 1, NEXT, 0)], ops=POP),
    # direct chain loop
    "chain_loop": seed(2, 0, [desc(DATA, 1, NEXT, 1), desc(DATA, 1, NEXT, 0)], [0], 1, ops=POP),
    # a 4 GiB - 1 length (LengthOverflow itself needs > 16k in-memory segments: unreachable here)
    "length_overflow": seed(2, 0, [desc(DATA, 0xFFFFFFFF, NEXT, 1), desc(DATA, 2, WRITE)], [0], 1,
                            ops=POP),
    # readable after writable
    "read_after_write": seed(2, 0, [desc(DATA, 8, WRITE | NEXT, 1), desc(DATA, 8)], [0], 1,
                             ops=POP),
    # buffer straddling the end of region 0 / in the hole between regions
    "buffer_outside": seed(2, 4, [desc(256 * 1024 - 8, 16), desc(512 * 1024, 8)], [0, 1], 2,
                           ops=POP + POP + RESET),
    # rings in region 1, buffers in both regions
    "two_regions": seed(5, 4 | 8 | 1 | 2,
                        [desc(DATA, 64, NEXT, 1), desc(R1 + 0x10000, 64, WRITE)], [0], 1,
                        ops=POP + push_last(64) + NEEDS + ENABLE),
    # used ring straddling the region end: validate refuses, pops fail
    "used_outside": seed(3, 0x10, [desc(DATA, 8)], [0], 1, ops=POP + RESET + POP),
    # misaligned avail ring
    "avail_misaligned": seed(3, 0x20, [desc(DATA, 8)], [0], 1, ops=POP),
    # avail idx jumping too far, head out of range, push out of range
    "avail_idx_jump": seed(2, 0, [desc(DATA, 8)], [0], 200, ops=POP + RESET + avail_idx(1) + POP),
    "head_out_of_range": seed(2, 0, [desc(DATA, 8)], [7], 1, ops=POP),
    "push_out_of_range": seed(2, 0, [desc(DATA, 8)], [0], 1, ops=push(9, 1) + POP),
    # 256-entry queue, 255 descriptors published, each a one-byte buffer, many pops
    "full_256": seed(8, 1, [desc(DATA + i, 1) for i in range(255)], list(range(255)), 255,
                     ops=(POP + push_last(1)) * 40 + NEEDS),
    # queue size 1, wrap-around of indices
    "size1_wrap": seed(0, 1, [desc(DATA, 4, WRITE)], [0], 0,
                       ops=b"".join(avail_idx(i) + POP + push_last(4) + NEEDS for i in range(1, 6))),
}

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for name, data in seeds.items():
    (out / name).write_bytes(data)
print(f"wrote {len(seeds)} seeds to {out}")
