#!/usr/bin/env python3
"""Writes the hand-made seeds of tests/fuzz/corpus/vhost_user_msg (input format: see the header of
fuzz_vhost_user_msg.cpp): one valid message of every supported request and reply, each directly
and through the socket, plus a few hostile ones. Usage: gen_vhost_user_seeds.py OUT_DIR"""
import struct
import sys
from pathlib import Path

V, REPLY, NEED = 1, 4, 8


def msg(req, payload=b"", flags=V, size=None):
    return struct.pack("<III", req, flags, len(payload) if size is None else size) + payload


def region(gpa, size, uaddr=0x7F0000000000, off=0):
    return struct.pack("<QQQQ", gpa, size, uaddr, off)


def table(regions):
    return struct.pack("<II", len(regions), 0) + b"".join(regions)


def seed(backend_reply, socket, nfds, body, queues=4, slots=8):
    mode = (1 if backend_reply else 0) | (2 if socket else 0)
    return bytes([mode, nfds, queues, slots]) + body


REQUESTS = {
    "get_features": (0, msg(1, flags=V | NEED)),
    "set_features": (0, msg(2, struct.pack("<Q", (1 << 32) | (1 << 30)))),
    "set_owner": (0, msg(3)),
    "reset_owner": (0, msg(4)),
    "set_mem_table_1": (1, msg(5, table([region(0, 0x100000)]))),
    "set_mem_table_3": (3, msg(5, table([region(0, 0x1000), region(0x100000, 0x2000, 0x10000, 0x1000),
                                          region(0xFFFFFFFFFFFFF000, 0x1000, 0)]))),
    "set_log_base": (1, msg(6, struct.pack("<QQ", 0x1000, 0))),
    "set_log_fd": (1, msg(7)),
    "set_vring_num": (0, msg(8, struct.pack("<II", 1, 256))),
    "set_vring_addr": (0, msg(9, struct.pack("<IIQQQQ", 0, 1, 0x1000, 0x3000, 0x2000, 0)))
    ,
    "set_vring_base": (0, msg(10, struct.pack("<II", 0, 7))),
    "get_vring_base": (0, msg(11, struct.pack("<II", 3, 0))),
    "set_vring_kick": (1, msg(12, struct.pack("<Q", 1))),
    "set_vring_call_nofd": (0, msg(13, struct.pack("<Q", 0x102))),
    "set_vring_err": (1, msg(14, struct.pack("<Q", 0))),
    "get_protocol_features": (0, msg(15)),
    "set_protocol_features": (0, msg(16, struct.pack("<Q", 0x1FFFF))),
    "get_queue_num": (0, msg(17)),
    "set_vring_enable": (0, msg(18, struct.pack("<II", 0, 1))),
    "get_config": (0, msg(24, struct.pack("<III", 0, 60, 0) + bytes(60))),
    "set_config": (0, msg(25, struct.pack("<III", 8, 4, 0) + b"abcd")),
    "get_inflight_fd": (0, msg(31, struct.pack("<QQHHI", 0, 0, 2, 256, 0))),
    "set_inflight_fd": (1, msg(32, struct.pack("<QQHHI", 4096, 0, 2, 256, 0))),
    "reset_device": (0, msg(34)),
    "get_max_mem_slots": (0, msg(36)),
    "add_mem_reg": (1, msg(37, struct.pack("<Q", 0) + region(0x200000, 0x1000))),
    "rem_mem_reg": (0, msg(38, struct.pack("<Q", 0) + region(0x200000, 0x1000))),
    "set_status": (0, msg(39, struct.pack("<Q", 0xF))),
    "get_status": (0, msg(40)),
}

REPLIES = {
    "r_get_features": (0, msg(1, struct.pack("<Q", 1 << 30), V | REPLY)),
    "r_get_vring_base": (0, msg(11, struct.pack("<II", 1, 99), V | REPLY)),
    "r_get_config": (0, msg(24, struct.pack("<III", 0, 8, 0) + bytes(8), V | REPLY)),
    "r_get_inflight_fd": (1, msg(31, struct.pack("<QQHHI", 4096, 0, 2, 256, 0), V | REPLY)),
    "r_ack": (0, msg(5, struct.pack("<Q", 0), V | REPLY)),
}

HOSTILE = {
    "h_overlap": (2, msg(5, table([region(0, 0x2000), region(0x1000, 0x1000)]))),
    "h_wrap": (1, msg(5, table([region(0xFFFFFFFFFFFFF000, 0x2000)]))),
    "h_nine_regions": (8, msg(5, table([region(i << 20, 0x1000) for i in range(9)]))),
    "h_too_many_fds": (10, msg(3)),
    "h_nofd_with_fd": (1, msg(12, struct.pack("<Q", 0x101))),
    "h_size_lies": (0, msg(2, b"\0" * 8, size=4000)),
    "h_huge_size": (0, msg(24, b"", size=0xFFFFFFFF)),
    "h_config_past_end": (0, msg(25, struct.pack("<III", 250, 8, 0) + bytes(8))),
    "h_unknown": (0, msg(99)),
}


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, (nfds, body) in REQUESTS.items():
        (out / name).write_bytes(seed(False, False, nfds, body))
        (out / (name + "_sock")).write_bytes(seed(False, True, nfds, body))
    for name, (nfds, body) in REPLIES.items():
        (out / name).write_bytes(seed(True, False, nfds, body))
        (out / (name + "_sock")).write_bytes(seed(True, True, nfds, body))
    for name, (nfds, body) in HOSTILE.items():
        (out / name).write_bytes(seed(False, False, nfds, body))
        (out / (name + "_sock")).write_bytes(seed(False, True, nfds, body))
    # A conversation on one socket: several messages back to back, the last one torn.
    conv = (REQUESTS["get_features"][1] + REQUESTS["set_owner"][1] + REQUESTS["set_vring_num"][1]
            + REQUESTS["set_mem_table_1"][1][:20])
    (out / "conversation_sock").write_bytes(seed(False, True, 1, conv))


if __name__ == "__main__":
    main()
