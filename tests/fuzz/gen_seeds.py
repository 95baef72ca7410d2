#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/split_queue or .../packed_queue (input
formats: see the headers of fuzz_split_queue.cpp and fuzz_packed_queue.cpp).
Usage: gen_seeds.py OUT_DIR [split|packed]   (default split)"""
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


# --- packed ring (fuzz_packed_queue.cpp) ---
AVAIL, USED = 0x80, 0x8000
EV_ENABLE, EV_DISABLE, EV_DESC = 0, 1, 2


def pdesc(addr, length, flags=0, ident=0, wrap=1):
    """A packed descriptor made available in a lap with the given driver wrap counter."""
    bits = AVAIL if wrap else USED
    return struct.pack("<QIHH", addr, length, ident, flags | bits)


def tdesc(addr, length, flags=0):
    """An indirect table entry (packed layout: id before flags)."""
    return struct.pack("<QIHH", addr, length, 0, flags)


def pseed(size, flags, descs, ev_off_wrap=0, ev_flags=0, ind=(), ops=b""):
    out = bytes([size % 256, flags, len(descs)]) + b"".join(descs)
    out += struct.pack("<HH", ev_off_wrap, ev_flags)
    out += bytes([len(ind)]) + b"".join(ind)
    return out + ops


P_POP, P_NEEDS, P_ENABLE, P_DISABLE, P_RESET = b"\x00", b"\x04", b"\x05", b"\x06", b"\x0b"


def p_push_held(pick, n):
    return b"\x03" + struct.pack("<BI", pick, n)


def p_push(ident, count, n):
    return b"\x02" + struct.pack("<HHI", ident, count, n)


def p_avail(slot, addr, length, flags, ident, wrap):
    """Guest makes one descriptor available at slot for the lap with the given wrap counter."""
    return b"\x08" + bytes([slot]) + struct.pack("<QIHH", addr, length, ident, flags) + \
        bytes([wrap])


def p_event(off_wrap, flags):
    return b"\x09" + struct.pack("<HH", off_wrap, flags)


def p_state(v, used):
    return b"\x0c" + struct.pack("<HB", v, 1 if used else 0)


def p_inflight(mode, scribbles=()):
    """Op 13: mode bit 0 clear = attach a fresh area; set = crash and attach a successor, after
    writing (offset, byte) scribbles over the area (at most 3)."""
    out = b"\x0d" + bytes([mode | (len(scribbles) << 1)])
    for off, val in scribbles:
        out += struct.pack("<HB", off, val)
    return out


def p_pop_direct(n, prefetch=True):
    """Op 14: pop_direct() of up to n (1..8) one-descriptor buffers."""
    return b"\x0e" + bytes([(n - 1) % 8, 1 if prefetch else 0])


def p_push_deferred(pick, length=None):
    """Op 15: push_deferred() of held buffer `pick`, with `length` bytes written (or none)."""
    if length is None:
        return b"\x0f" + bytes([pick, 0])
    return b"\x0f" + bytes([pick, 1]) + struct.pack("<I", length)


P_PUBLISH = b"\x10"


def laps(size, rounds):
    """Single-descriptor buffers, each published in its own lap, popped and pushed."""
    ops = b""
    for i in range(rounds):
        slot, wrap = i % size, 1 - (i // size) % 2
        ops += p_avail(slot, DATA + 8 * slot, 8, WRITE, i % size, wrap) + P_POP + \
            p_push_held(0, 8) + P_NEEDS
    return ops


packed_seeds = {
    # one readable + one writable descriptor, id 5 in the last one
    "simple_chain": pseed(8, 0, [pdesc(DATA, 64, NEXT), pdesc(DATA + 64, 128, WRITE, 5)],
                          ops=P_POP + p_push_held(0, 128) + P_NEEDS + P_POP + P_NEEDS),
    # three buffers completed out of order
    "out_of_order": pseed(8, 0, [pdesc(DATA, 8, WRITE, 0), pdesc(DATA + 8, 8, NEXT),
                                 pdesc(DATA + 16, 8, WRITE, 1), pdesc(DATA + 24, 8, WRITE, 2)],
                          ops=P_POP * 3 + p_push_held(1, 8) + p_push_held(1, 8) +
                          p_push_held(0, 8) + P_NEEDS + P_POP),
    # wrap-around over several laps on a size that is not a power of 2
    "laps_size5": pseed(5, 0, [], ops=laps(5, 17)),
    "laps_size1": pseed(1, 1, [], ev_flags=EV_DESC, ops=laps(1, 6)),
    # EVENT_IDX: driver arms slot 1 of lap 0, then slot 0 of lap 1
    "event_idx": pseed(4, 1, [pdesc(DATA, 8, WRITE, 0), pdesc(DATA, 8, WRITE, 1),
                              pdesc(DATA, 8, WRITE, 2)],
                       ev_off_wrap=0x8001, ev_flags=EV_DESC,
                       ops=P_DISABLE + P_POP + p_push_held(0, 8) + P_NEEDS + P_POP +
                       p_push_held(0, 8) + P_NEEDS + p_event(0x0000, EV_DESC) + P_ENABLE +
                       P_POP + p_push_held(0, 8) + P_NEEDS + P_ENABLE),
    "event_disabled": pseed(4, 0, [pdesc(DATA, 8, 0, 0)], ev_flags=EV_DISABLE,
                            ops=P_POP + p_push_held(0, 0) + P_NEEDS + P_ENABLE + P_DISABLE),
    # indirect table of three entries
    "indirect": pseed(8, 2, [pdesc(IND_GPA, 48, INDIRECT, 3)],
                      ind=[tdesc(DATA, 32), tdesc(DATA + 32, 32), tdesc(DATA + 64, 512, WRITE)],
                      ops=P_POP + p_push_held(0, 512) + P_POP),
    # hostile: indirect without the feature, then reset
    "indirect_not_negotiated": pseed(8, 0, [pdesc(IND_GPA, 16, INDIRECT)], ind=[tdesc(DATA, 16)],
                                     ops=P_POP + P_POP + p_push(0, 1, 0) + P_RESET + P_POP),
    "nested_indirect": pseed(8, 2, [pdesc(IND_GPA, 16, INDIRECT)],
                             ind=[tdesc(IND_GPA, 16, INDIRECT)], ops=P_POP + P_POP),
    "indirect_in_chain": pseed(8, 2, [pdesc(DATA, 8, NEXT), pdesc(IND_GPA, 16, INDIRECT)],
                               ind=[tdesc(DATA, 16)], ops=P_POP),
    "indirect_with_next": pseed(8, 2, [pdesc(IND_GPA, 16, INDIRECT | NEXT), pdesc(DATA, 8)],
                                ind=[tdesc(DATA, 16)], ops=P_POP),
    "indirect_bad_len": pseed(8, 2, [pdesc(IND_GPA, 20, INDIRECT)], ops=P_POP),
    # chain around the whole ring, NEXT everywhere
    "chain_too_long": pseed(4, 0, [pdesc(DATA, 1, NEXT)] * 4, ops=P_POP),
    # later descriptor of a chain not available
    "desc_not_avail": pseed(4, 0, [pdesc(DATA, 1, NEXT), pdesc(DATA, 1, 0, 0, wrap=0)], ops=P_POP),
    "id_out_of_range": pseed(4, 0, [pdesc(DATA, 8, 0, 4)], ops=P_POP),
    "id_in_use": pseed(4, 0, [pdesc(DATA, 8, 0, 1), pdesc(DATA, 8, 0, 1)], ops=P_POP + P_POP),
    "read_after_write": pseed(4, 0, [pdesc(DATA, 8, WRITE | NEXT), pdesc(DATA, 8, 0, 0)],
                              ops=P_POP),
    "length_overflow": pseed(4, 0, [pdesc(DATA, 0xFFFFFFFF, NEXT), pdesc(DATA, 2, WRITE)],
                             ops=P_POP),
    "buffer_outside": pseed(4, 4, [pdesc(256 * 1024 - 8, 16, 0, 0), pdesc(512 * 1024, 8, 0, 1)],
                            ops=P_POP + P_RESET + P_POP),
    # rings in region 1, buffers in both
    "two_regions": pseed(16, 4 | 8 | 1 | 2,
                         [pdesc(DATA, 64, NEXT), pdesc(R1 + 0x10000, 64, WRITE, 7)],
                         ev_flags=EV_ENABLE, ops=P_POP + p_push_held(0, 64) + P_NEEDS + P_ENABLE),
    # areas refused by validate
    "desc_outside": pseed(8, 0x10, [pdesc(DATA, 8)], ops=P_POP + P_RESET + P_POP),
    "driver_misaligned": pseed(8, 0x20, [pdesc(DATA, 8)], ops=P_POP + P_NEEDS),
    # device bugs: push of ids not held, wrong desc_count
    "push_not_held": pseed(4, 0, [pdesc(DATA, 8, NEXT), pdesc(DATA, 8, 0, 2)],
                           ops=P_POP + p_push(2, 1, 0) + P_RESET + P_POP),
    # ring overrun: 3 + 1 slots held, slot 0 re-published in lap 1
    "overrun": pseed(4, 0, [pdesc(DATA, 8, NEXT), pdesc(DATA, 8, NEXT), pdesc(DATA, 8, 0, 0),
                            pdesc(DATA, 8, 0, 1)],
                     ops=P_POP + P_POP + p_avail(0, DATA, 8, 0, 2, 0) + P_POP),
    # restore state (vhost SET_VRING_BASE) into lap 1 and pop there
    "restore_state": pseed(8, 0, [], ops=p_state(0x0003, False) + p_state(0x0003, True) +
                           p_avail(3, DATA, 8, WRITE, 6, 0) + P_POP + p_push_held(0, 8) +
                           p_state(0x0009, False)),
    # inflight area: a chain (id 0, 2 slots), ids 1 and 2 popped; 2 completes first, its used
    # descriptor overwriting id 0's head; crash; the successor resubmits 0 and 1 and goes on
    "inflight_crash": pseed(8, 0, [pdesc(DATA, 8, NEXT), pdesc(DATA + 8, 8, WRITE, 0),
                                   pdesc(DATA + 16, 8, WRITE, 1), pdesc(DATA + 24, 8, WRITE, 2)],
                            ops=p_inflight(0) + P_POP * 3 + p_push_held(2, 8) + p_inflight(1) +
                            P_POP + p_push_held(1, 8) + p_push_held(0, 8) +
                            p_avail(4, DATA, 8, WRITE, 2, 1) + P_POP + p_push_held(0, 8) +
                            p_inflight(1) + P_POP),
    # the same crash with a hostile front-end's bytes over the area: entry 0 marked "being
    # completed", used_idx moved, a list pointer out of range
    "inflight_scribbled": pseed(8, 0, [pdesc(DATA, 8, NEXT), pdesc(DATA + 8, 8, WRITE, 0),
                                       pdesc(DATA + 16, 8, WRITE, 1)],
                                ops=p_inflight(0) + P_POP * 2 +
                                p_inflight(1, [(32, 2), (16, 5), (34, 0xff)]) + P_POP * 3),
    # bursts: four single-descriptor buffers and a chain; pop_direct stops at the chain; rx-like
    # deferred returns with lengths, then (IN_ORDER) tx-like ones batched into one descriptor
    "burst_in_order": pseed(8, 0x40, [pdesc(DATA + 8 * i, 8, WRITE, i) for i in range(4)] +
                            [pdesc(DATA, 8, NEXT), pdesc(DATA + 8, 8, WRITE, 4)],
                            ops=p_pop_direct(8) + P_POP + p_push_deferred(0, 8) +
                            p_push_deferred(0, 8) + P_PUBLISH + p_push_deferred(0) +
                            p_push_deferred(0) + p_push_deferred(0) + P_NEEDS +
                            p_avail(6, DATA, 8, 0, 5, 1) + p_avail(7, DATA, 8, 0, 6, 1) +
                            p_pop_direct(2) + p_push_deferred(1) + p_push_deferred(0) + P_PUBLISH),
    # full 256 ring of single buffers, popped and pushed in order
    "full_256": pseed(0, 1, [pdesc(DATA + i, 1, 0, i) for i in range(255)],
                      ops=(P_POP + p_push_held(0, 1)) * 60 + P_NEEDS),
}

out = Path(sys.argv[1])
which = sys.argv[2] if len(sys.argv) > 2 else "split"
chosen = {"split": seeds, "packed": packed_seeds}[which]
out.mkdir(parents=True, exist_ok=True)
for name, data in chosen.items():
    (out / name).write_bytes(data)
print(f"wrote {len(chosen)} {which} seeds to {out}")
