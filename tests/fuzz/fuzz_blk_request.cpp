// libFuzzer target for the virtio-blk request parser (blk::parse_request): a hostile descriptor
// chain (segment list plus the guest bytes behind it) and hostile device limits.
//
// Input layout (missing bytes read as zero):
//   [0] flags: bit0 read-only, bit1 DISCARD negotiated, bit2 WRITE_ZEROES negotiated, bit3 tiny
//       limits (2 segments, 16 sectors), bit4 tiny iovec storage (4 entries), bit5 capacity
//       taken modulo 4096 (else raw)
//   [1..8] capacity in sectors (u64)
//   [9] segment count (% 33), then per segment:
//       kind byte: bit0 device-writable; bits1-2 address mode:
//         0: kBlobGpa + u16 offset     1: region 1 + u16 offset
//         2: raw u64 address           3: end of region 0 minus u8 (straddles the end)
//       length: u16 (mode 2: u32)
//   rest: the blob, copied to guest memory at kBlobGpa (headers, discard segments).
// Invariants (violation -> __builtin_trap): a status pointer exists iff some writable byte does
// and lies in guest memory; an accepted read/write covers whole sectors within the capacity and
// its iovecs add up to data_len inside guest memory; writes are refused on a read-only disk;
// accepted discard/write-zeroes ranges lie within the capacity and the segment limits; GET_ID
// data is at most 20 bytes.
#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/blk_request.hpp"
#include "iovirt/virtio/split_queue.hpp"
#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using iovirt::GuestMemory;
using iovirt::RegionSpec;
using iovirt::virtio::Segment;
namespace blk = iovirt::virtio::blk;

constexpr uint64_t kRegion0Size = 256 * 1024;
constexpr uint64_t kRegion1Gpa = 1024 * 1024;  // a hole between the regions
constexpr uint64_t kRegion1Size = 128 * 1024;
constexpr uint64_t kBlobGpa = 0x1000;
constexpr size_t kMaxBlob = 64 * 1024;
constexpr uint32_t kSegMax = 126;
constexpr uint32_t kMaxRanges = 8;

// FUZZ_BLK_REQUEST_VERBOSE=1 prints each parse result (for checking what a seed reaches).
bool verbose() {
  static const bool v = std::getenv("FUZZ_BLK_REQUEST_VERBOSE") != nullptr;
  return v;
}

using iovirt::fuzz::check;
using iovirt::fuzz::Reader;

GuestMemory& memory() {
  static std::optional<GuestMemory> mem = [] {
    const RegionSpec specs[] = {{0, kRegion0Size}, {kRegion1Gpa, kRegion1Size}};
    auto m = GuestMemory::create(specs);
    check(m.has_value());
    return std::optional<GuestMemory>(std::move(*m));
  }();
  return *mem;
}

// Whether [p, p + n) lies inside one region's host mapping.
bool in_guest(const GuestMemory& mem, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (const auto& r : mem.regions()) {
    if (b >= r.host && b <= r.host + r.size && n <= static_cast<size_t>(r.host + r.size - b)) {
      return true;
    }
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  GuestMemory& mem = memory();
  Reader in(data, size);
  const uint8_t flags = in.u8();
  uint64_t capacity = in.u64();
  if ((flags & 0x20) != 0) capacity %= 4096;

  blk::BlkLimits lim;
  lim.capacity_sectors = capacity;
  lim.readonly = (flags & 1) != 0;
  lim.discard = (flags & 2) != 0;
  lim.write_zeroes = (flags & 4) != 0;
  const bool tiny = (flags & 8) != 0;
  lim.max_discard_seg = tiny ? 2 : kMaxRanges;
  lim.max_write_zeroes_seg = tiny ? 2 : kMaxRanges;
  lim.max_discard_sectors = tiny ? 16 : (1u << 22);
  lim.max_write_zeroes_sectors = tiny ? 16 : (1u << 22);

  const unsigned nseg = in.u8() % 33;
  std::vector<Segment> segs;
  bool any_writable = false;
  for (unsigned i = 0; i < nseg; ++i) {
    const uint8_t kind = in.u8();
    Segment s{};
    s.write = (kind & 1) != 0;
    switch ((kind >> 1) & 3) {
      case 0:
        s.addr = kBlobGpa + in.u16();
        break;
      case 1:
        s.addr = kRegion1Gpa + in.u16();
        break;
      case 2:
        s.addr = in.u64();
        break;
      default:
        s.addr = kRegion0Size - in.u8();
        break;
    }
    s.len = ((kind >> 1) & 3) == 2 ? in.u32() : in.u16();
    any_writable = any_writable || (s.write && s.len != 0);
    segs.push_back(s);
  }
  const auto blob = in.rest().first(std::min(in.rest().size(), kMaxBlob));
  check(mem.write(kBlobGpa, blob).has_value());

  static std::vector<iovec> iov(kSegMax);
  static std::vector<blk::BlkRange> ranges(kMaxRanges);
  const blk::BlkRequestStorage storage{
      (flags & 0x10) != 0 ? std::span<iovec>(iov).first(4) : std::span<iovec>(iov),
      std::span<blk::BlkRange>(ranges)};

  const blk::BlkRequest r = blk::parse_request(mem, segs, lim, storage);
  if (verbose()) {
    std::fprintf(stderr, "op %s status %d%s data_len %llu iov %u ranges %u reason '%s'\n",
                 blk::to_string(r.op), r.status, r.status_ptr == nullptr ? " (no status byte)" : "",
                 static_cast<unsigned long long>(r.data_len), r.iov_count, r.range_count, r.reason);
  }

  // A status byte exists iff the chain has a writable byte inside guest memory.
  if (r.status_ptr != nullptr) {
    check(any_writable);
    check(in_guest(mem, r.status_ptr, 1));
  }
  if (r.status_ptr == nullptr || r.status != blk::VIRTIO_BLK_S_OK) {
    check(r.status_ptr == nullptr || r.status == blk::VIRTIO_BLK_S_IOERR ||
          r.status == blk::VIRTIO_BLK_S_UNSUPP);
    return 0;
  }

  volatile uint8_t sink = 0;
  uint64_t total = 0;
  check(r.iov_count <= storage.iov.size());
  for (uint32_t i = 0; i < r.iov_count; ++i) {
    check(storage.iov[i].iov_len > 0);
    check(in_guest(mem, storage.iov[i].iov_base, storage.iov[i].iov_len));
    total += storage.iov[i].iov_len;
    // Touch the bytes the backend would move (reading only, to keep runs deterministic).
    const auto* b = static_cast<const uint8_t*>(storage.iov[i].iov_base);
    sink = static_cast<uint8_t>(sink + b[0] + b[storage.iov[i].iov_len - 1]);
  }
  (void)sink;

  switch (r.op) {
    case blk::BlkOp::Read:
    case blk::BlkOp::Write: {
      if (r.op == blk::BlkOp::Write) check(!lim.readonly);
      check(total == r.data_len);
      check(r.data_len % 512 == 0);
      check(r.offset % 512 == 0);
      const uint64_t sector = r.offset / 512;
      check(sector <= capacity && r.data_len / 512 <= capacity - sector);
      break;
    }
    case blk::BlkOp::GetId:
      check(total == r.data_len && r.data_len <= blk::VIRTIO_BLK_ID_BYTES);
      break;
    case blk::BlkOp::Discard:
    case blk::BlkOp::WriteZeroes: {
      check(!lim.readonly);
      check(r.op == blk::BlkOp::Discard ? lim.discard : lim.write_zeroes);
      const uint32_t max_seg =
          r.op == blk::BlkOp::Discard ? lim.max_discard_seg : lim.max_write_zeroes_seg;
      check(r.range_count <= max_seg);
      for (uint32_t i = 0; i < r.range_count; ++i) {
        const blk::BlkRange& g = storage.ranges[i];
        check(g.len > 0 && g.len % 512 == 0 && g.offset % 512 == 0);
        check(g.offset / 512 <= capacity && g.len / 512 <= capacity - g.offset / 512);
        check(!(r.op == blk::BlkOp::Discard && g.unmap));
      }
      break;
    }
    case blk::BlkOp::Flush:
      break;
    case blk::BlkOp::Other:
      check(false);  // unknown types are never accepted
      break;
  }
  return 0;
}
