// Uncompressed x86-64 Linux kernels (vmlinux, ELF64): loaded segment by segment at their
// physical addresses and entered at the 64-bit entry point, skipping the bzImage decompressor.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt {

struct ElfSegment {
  uint64_t file_offset;
  uint64_t paddr;
  uint64_t filesz;
  uint64_t memsz;
};

struct ElfKernel {
  uint64_t entry = 0;            // physical address of startup_64
  std::vector<ElfSegment> segments;
  uint64_t lowest = 0, highest = 0;  // physical range covered by the segments
};

[[nodiscard]] bool is_elf(std::span<const uint8_t> head);

// Parses the ELF header and program headers of an untrusted file of `file_size` bytes whose
// first bytes are `head` (at least the program header table must be inside `head`). Refuses
// anything but a little-endian ELF64 x86-64 executable, program headers outside the file,
// segments whose file range is outside the file or whose memory range wraps, no PT_LOAD
// segment, and an entry point outside every loaded segment.
Result<ElfKernel> parse_elf_kernel(std::span<const uint8_t> head, uint64_t file_size);

}  // namespace iovirt
