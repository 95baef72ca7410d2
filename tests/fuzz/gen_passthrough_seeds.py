#!/usr/bin/env python3
"""Seeds for fuzz_passthrough_config: realistic device config spaces (an edu-like function with
MSI, an e1000e-like one with PM, MSI, PCIe and MSI-X) followed by guest operations (BAR sizing,
memory enable, MSI / MSI-X enable, table writes, BAR moves). Layout: see fuzz_passthrough_config.cpp."""
import os
import struct
import sys

def cfg_base(vendor, device, cls):
    c = bytearray(256)
    struct.pack_into('<HH', c, 0, vendor, device)
    struct.pack_into('<H', c, 6, 0x10)  # capabilities list
    c[0x09:0x0c] = bytes([cls & 0xff, (cls >> 8) & 0xff, cls >> 16])
    return c

def edu():
    c = cfg_base(0x1234, 0x11e8, 0x00ff00)
    struct.pack_into('<I', c, 0x10, 0x0)        # BAR0 mem32
    c[0x34] = 0x40
    c[0x3d] = 1
    c[0x40:0x42] = bytes([0x05, 0x00])           # MSI, end of list
    struct.pack_into('<H', c, 0x42, 0x0080)      # 64-bit, 1 vector
    bars = bytes([0x40 | 16, 0, 0, 0, 0, 0])     # BAR0 1 MiB (2^(4+16)), mmap
    irqs = bytes([1]) + struct.pack('<H', 0) + bytes([1])
    return c, bars, irqs

def e1000e():
    c = cfg_base(0x8086, 0x10d3, 0x020000)
    struct.pack_into('<I', c, 0x18, 0x1)         # BAR2 I/O
    c[0x34] = 0xc8
    c[0x3d] = 1
    c[0xc8:0xca] = bytes([0x01, 0xd0])           # PM -> MSI
    c[0xd0:0xd2] = bytes([0x05, 0x60])           # MSI -> PCIe
    struct.pack_into('<H', c, 0xd2, 0x0080)
    c[0x60:0x62] = bytes([0x10, 0xa0])           # PCIe -> MSI-X
    struct.pack_into('<H', c, 0x62, 0x0002)
    c[0xa0:0xa2] = bytes([0x11, 0x00])           # MSI-X, end
    struct.pack_into('<HII', c, 0xa2, 4, 0x3, 0x2003)  # 5 vectors, table BAR3+0, PBA BAR3+0x2000
    bars = bytes([0x40 | 13, 0x40 | 13, 1, 0x40 | 10, 0, 0])  # 128K, 128K, 32 B, 16K (2^(4+n))
    irqs = bytes([1]) + struct.pack('<H', 5) + bytes([1])
    return c, bars, irqs

def op_cfg_write(off, width_log2, value):
    return bytes([0, width_log2]) + struct.pack('<HQ', off, value)

def op_bar_write(bar, off, width_log2, value):
    return bytes([2, width_log2, bar]) + struct.pack('<IQ', off, value)

def op_place(bar, addr):
    return bytes([4, 0, bar]) + struct.pack('<Q', addr)

def seed(dev, ops):
    c, bars, irqs = dev
    return bytes(c) + bytes([1]) + bars + irqs + b''.join(ops)

def main(out):
    os.makedirs(out, exist_ok=True)
    seeds = {
        'edu-msi': seed(edu(), [op_cfg_write(0x10, 2, 0xffffffff), op_cfg_write(0x10, 2, 0xc0000000),
                                op_cfg_write(0x04, 1, 0x6), op_place(0, 0xc0000000),
                                op_cfg_write(0x44, 2, 0xfee00000), op_cfg_write(0x4c, 1, 0x4041),
                                op_cfg_write(0x42, 1, 0x0081), op_cfg_write(0x42, 1, 0x0080)]),
        'e1000e-msix': seed(e1000e(), [op_cfg_write(0x1c, 2, 0xc0020000), op_cfg_write(0x04, 1, 0x7),
                                       op_place(3, 0xc0020000),
                                       op_cfg_write(0xa2, 1, 0x8004),
                                       op_bar_write(3, 0x0, 2, 0xfee00000), op_bar_write(3, 0x8, 2, 0x4041),
                                       op_bar_write(3, 0xc, 2, 0x0), op_bar_write(3, 0x50, 2, 0x1),
                                       op_place(3, 0xc0040000), op_cfg_write(0xa2, 1, 0x0004)]),
        'loop-chain': bytes(cfg_base(0x1af4, 0x1000, 0x020000)[:0x34]) + bytes([0x40]) + bytes(11) +
                      bytes([0x05, 0x40]) + bytes(256 - 0x42),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), 'wb') as f:
            f.write(data)

if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'corpus', 'passthrough_config'))
