// libFuzzer target for the device side of the split virtqueue (SplitQueue), rust-vmm style:
// the input is a hostile guest plus a device-side call sequence.
//
// Input layout (missing bytes read as zero):
//   [0] queue size = 1 << (b % 9)           (1..256)
//   [1] bit0 EVENT_IDX, bit1 INDIRECT, bit2 second region, bit3 rings in the second region,
//       bit4 misplace the used ring (near the end of its region), bit5 odd avail address
//   [2] number of raw descriptors to write (% (size + 1)), then 16 bytes each
//   [3] number of raw avail ring entries (% (size + 1)), then 2 bytes each
//   [4..5] avail flags, [6..7] avail idx, [8..9] used_event
//   [10] number of raw indirect table entries (% 65), then 16 bytes each (at kIndirectGpa)
//   rest: operations, one opcode byte each followed by its operands (see run_ops).
// Invariants (violation -> __builtin_trap): popped segments lie inside one guest memory region,
// chain lengths add up without overflow, segment count bounded, readable before writable,
// head < size, a broken queue stays broken with the same fault until reset().
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/split_queue.hpp"
#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using iovirt::GuestMemory;
using iovirt::RegionSpec;
using iovirt::virtio::DescriptorChain;
using iovirt::virtio::QueueFault;
using iovirt::virtio::Segment;
using iovirt::virtio::SplitQueue;
using iovirt::virtio::VirtqDesc;

constexpr uint64_t kRegion0Gpa = 0;
constexpr uint64_t kRegion0Size = 256 * 1024;
constexpr uint64_t kRegion1Gpa = 1024 * 1024;  // a hole between the regions
constexpr uint64_t kRegion1Size = 128 * 1024;
constexpr uint64_t kIndirectGpa = 0x20000;  // in region 0
constexpr uint16_t kMaxSize = 256;

// FUZZ_SPLIT_QUEUE_VERBOSE=1 prints what each pop did (for checking what a seed reaches).
bool verbose() {
  static const bool v = std::getenv("FUZZ_SPLIT_QUEUE_VERBOSE") != nullptr;
  return v;
}

// Reads operands; past the end of the input every byte is zero.
using iovirt::fuzz::check;
using iovirt::fuzz::Reader;

VirtqDesc read_desc(Reader& in) {
  VirtqDesc d{};
  d.addr = in.u64();
  d.len = in.u32();
  d.flags = in.u16();
  d.next = in.u16();
  return d;
}

// Guest memory is created once per layout (memfd + mmap is too slow per input) and zeroed
// before each input.
GuestMemory& memory(bool two_regions) {
  static std::unique_ptr<GuestMemory> mems[2];
  auto& m = mems[two_regions ? 1 : 0];
  if (!m) {
    const RegionSpec one[] = {{kRegion0Gpa, kRegion0Size}};
    const RegionSpec two[] = {{kRegion0Gpa, kRegion0Size}, {kRegion1Gpa, kRegion1Size}};
    auto r = two_regions ? GuestMemory::create(two) : GuestMemory::create(one);
    check(r.has_value());
    m = std::make_unique<GuestMemory>(std::move(*r));
  }
  for (const auto& region : m->regions()) std::memset(region.host, 0, region.size);
  return *m;
}

struct Layout {
  uint16_t size;
  bool event_idx;
  bool indirect;
  uint64_t desc;
  uint64_t avail;
  uint64_t used;
};

Layout decode_layout(Reader& in, bool& two_regions) {
  Layout l{};
  l.size = static_cast<uint16_t>(1u << (in.u8() % 9));
  const uint8_t f = in.u8();
  l.event_idx = (f & 1) != 0;
  l.indirect = (f & 2) != 0;
  two_regions = (f & 4) != 0;
  const uint64_t base = (two_regions && (f & 8) != 0) ? kRegion1Gpa : kRegion0Gpa;
  l.desc = base + 0x1000;
  l.avail = l.desc + iovirt::virtio::desc_area_bytes(l.size) + ((f & 0x20) != 0 ? 1 : 0);
  l.used = (l.avail + iovirt::virtio::avail_area_bytes(l.size) + 0xfff) & ~uint64_t{0xfff};
  if ((f & 0x10) != 0) {
    // Straddles the end of region 0 (or of region 1): validate() must refuse it.
    const uint64_t end = base == kRegion1Gpa ? kRegion1Gpa + kRegion1Size : kRegion0Size;
    l.used = end - 8;
  }
  return l;
}

// Writes may fail on purpose (address outside memory); the device must cope either way.
template <class T>
void poke(const GuestMemory& mem, uint64_t gpa, const T& v) {
  (void)mem.write_obj(gpa, v);
}

bool configure(SplitQueue& q, const GuestMemory& mem, const Layout& l) {
  q.reset();
  if (!q.set_size(l.size)) return false;
  q.set_desc_table(l.desc);
  q.set_avail_ring(l.avail);
  q.set_used_ring(l.used);
  q.set_event_idx(l.event_idx);
  q.set_indirect(l.indirect);
  if (!q.validate(mem)) {
    check(q.broken());
    return false;
  }
  q.set_ready(true);
  return true;
}

// Checks everything the device promises about a popped chain.
void check_chain(const GuestMemory& mem, const SplitQueue& q, const DescriptorChain& c) {
  check(c.head < q.size());
  check(!c.segments.empty());
  check(c.segments.size() <= q.size() + size_t{SplitQueue::kMaxIndirectEntries});
  uint64_t readable = 0;
  uint64_t writable = 0;
  bool seen_write = false;
  for (const Segment& s : c.segments) {
    // Inside ONE region: span() refuses ranges outside memory or straddling two regions.
    check(mem.span(s.addr, s.len).has_value());
    check(s.addr + s.len >= s.addr);
    if (s.write) {
      seen_write = true;
      writable += s.len;
    } else {
      check(!seen_write);
      readable += s.len;
    }
  }
  check(readable == c.readable_len);
  check(writable == c.writable_len);
  check(readable + writable <= UINT32_MAX);
}

void run_ops(Reader& in, SplitQueue& q, const GuestMemory& mem, const Layout& l) {
  using namespace iovirt::virtio;
  std::optional<uint16_t> last_head;
  for (int steps = 0; !in.empty() && steps < 512; ++steps) {
    const bool was_broken = q.broken();
    const QueueFault was_fault = q.fault();
    switch (in.u8() % 13) {
      case 1: {  // pop_direct, a burst of 1..16: every chain it returns is one direct descriptor
        std::array<DirectChain, 16> out{};
        const size_t n = 1 + in.u8() % out.size();
        auto r = q.pop_direct(mem, std::span(out.data(), n));
        if (r) {
          check(!was_broken);
          check(r->count <= n);
          for (uint32_t i = 0; i < r->count; ++i) {
            check(out[i].head < q.size());
            auto sp = mem.span(out[i].seg.addr, out[i].seg.len);
            check(sp.has_value());
            check(sp->data() == out[i].host);
            last_head = out[i].head;
          }
        } else {
          check(q.broken() || !q.ready());
        }
        break;
      }
      case 0: {  // pop
        auto r = q.pop(mem);
        if (r) {
          check(!was_broken);
          if (verbose()) {
            std::fprintf(stderr, "pop: %s\n",
                         *r ? ("chain of " + std::to_string((*r)->segments.size())).c_str()
                            : "empty");
          }
          if (*r) {
            check_chain(mem, q, **r);
            last_head = (*r)->head;
          }
        } else {
          if (verbose()) std::fprintf(stderr, "pop: %s\n", r.error().message().c_str());
          check(q.broken() || !q.ready());
        }
        break;
      }
      case 2: {  // push(head, len)
        const uint16_t head = in.u16();
        const uint32_t len = in.u32();
        auto r = q.push(mem, head, len);
        if (r) check(!was_broken && head < q.size());
        break;
      }
      case 3: {  // push the last popped head back, the usual device path
        const uint32_t len = in.u32();
        if (last_head) {
          auto r = q.push(mem, *last_head, len);
          if (r) check(!was_broken);
          }
        break;
      }
      case 4: {
        auto r = q.needs_notification(mem);
        if (r) check(!was_broken);
        break;
      }
      case 5:
        (void)q.enable_notification(mem);
        break;
      case 6:
        (void)q.disable_notification(mem);
        break;
      case 7:  // guest: avail idx
        poke(mem, l.avail + avail_idx_offset(), in.u16());
        break;
      case 8: {  // guest: rewrite one descriptor
        const uint16_t i = static_cast<uint16_t>(in.u8() % l.size);
        poke(mem, l.desc + 16ull * i, read_desc(in));
        break;
      }
      case 9: {  // guest: avail ring entry, then publish it
        const uint16_t slot = static_cast<uint16_t>(in.u8() % l.size);
        poke(mem, l.avail + avail_ring_offset(slot), in.u16());
        break;
      }
      case 10:  // guest: avail flags or used_event
        if ((in.u8() & 1) != 0) {
          poke(mem, l.avail + avail_flags_offset(), in.u16());
        } else {
          poke(mem, l.avail + avail_used_event_offset(l.size), in.u16());
        }
        break;
      case 11: {  // guest: one indirect table entry
        const uint64_t i = in.u8() % 64;
        poke(mem, kIndirectGpa + 16 * i, read_desc(in));
        break;
      }
      case 12:  // device reset and re-setup (the only way out of broken)
        last_head.reset();
        if (configure(q, mem, l)) check(!q.broken());
        continue;
    }
    // A broken queue stays broken, with its first fault, until reset.
    if (was_broken) {
      check(q.broken());
      check(q.fault() == was_fault);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iovirt::virtio;
  Reader in(data, size);
  bool two_regions = false;
  const Layout l = decode_layout(in, two_regions);
  const GuestMemory& mem = memory(two_regions);

  // The hostile guest's initial ring contents.
  const unsigned ndesc = in.u8() % (l.size + 1u);
  for (unsigned i = 0; i < ndesc; ++i) poke(mem, l.desc + 16ull * i, read_desc(in));
  const unsigned navail = in.u8() % (l.size + 1u);
  for (unsigned i = 0; i < navail; ++i) {
    poke(mem, l.avail + avail_ring_offset(i), in.u16());
  }
  poke(mem, l.avail + avail_flags_offset(), in.u16());
  poke(mem, l.avail + avail_idx_offset(), in.u16());
  poke(mem, l.avail + avail_used_event_offset(l.size), in.u16());
  const unsigned nind = in.u8() % 65u;
  for (unsigned i = 0; i < nind; ++i) poke(mem, kIndirectGpa + 16ull * i, read_desc(in));

  static auto queue = SplitQueue::create(kMaxSize);
  check(queue.has_value());
  SplitQueue& q = *queue;
  configure(q, mem, l);
  run_ops(in, q, mem, l);
  return 0;
}
