// libFuzzer target for the device side of the packed virtqueue (PackedQueue), in the style of
// fuzz_split_queue.cpp: the input is a hostile guest plus a device-side call sequence.
//
// Input layout (missing bytes read as zero):
//   [0] queue size: 1..255, 0 means 256 (packed sizes need not be powers of 2)
//   [1] bit0 EVENT_IDX, bit1 INDIRECT, bit2 second region, bit3 rings in the second region,
//       bit4 misplace the descriptor ring (straddling its region's end), bit5 misaligned
//       driver event area, bit6 IN_ORDER (deferred returns of unwritten buffers batch as one)
//   [2] number of raw descriptors to write from slot 0 (% (size + 1)), then 16 bytes each
//   [3..4] driver event off_wrap, [5..6] driver event flags
//   [7] number of raw indirect table entries (% 65), then 16 bytes each (at kIndirectGpa)
//   rest: operations, one opcode byte each followed by its operands (see run_ops).
// Bursts (ops 14-16): pop_direct(), push_deferred() of any held buffer, publish_used().
// Inflight tracking (op 13): attach a fresh inflight area, or play a crash — a successor queue
// attaches the area the queue left behind, optionally with input bytes written over it (a
// hostile front-end). Without such bytes the successor must resume exactly: same positions, the
// same slots held, and its resubmissions are exactly the buffers held at the crash.
// Invariants (violation -> __builtin_trap): popped segments lie inside one guest memory region,
// lengths add up without overflow, readable before writable, id < size, 1 <= desc_count <= size
// (1 for an indirect buffer), the device never holds more slots than the ring has, the held
// slots match what the harness popped and did not push, positions stay inside the ring, a push
// advances next_used by desc_count, a broken queue stays broken with the same fault until reset.
#include <algorithm>
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
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/inflight.hpp"
#include "iovirt/virtio/packed_queue.hpp"
#include "iovirt/virtio/packed_ring.hpp"
#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using iovirt::GuestMemory;
using iovirt::RegionSpec;
using iovirt::virtio::DescriptorChain;
using iovirt::virtio::DirectChain;
using iovirt::virtio::SplitQueue;
using iovirt::virtio::PackedQueue;
using iovirt::virtio::PvirtqDesc;
using iovirt::virtio::QueueFault;
using iovirt::virtio::Segment;

constexpr uint64_t kRegion0Gpa = 0;
constexpr uint64_t kRegion0Size = 256 * 1024;
constexpr uint64_t kRegion1Gpa = 1024 * 1024;  // a hole between the regions
constexpr uint64_t kRegion1Size = 128 * 1024;
constexpr uint64_t kIndirectGpa = 0x20000;  // in region 0
constexpr uint16_t kMaxSize = 256;

// FUZZ_PACKED_QUEUE_VERBOSE=1 prints what each pop did (for checking what a seed reaches).
bool verbose() {
  static const bool v = std::getenv("FUZZ_PACKED_QUEUE_VERBOSE") != nullptr;
  return v;
}

using iovirt::fuzz::check;
using iovirt::fuzz::Reader;

PvirtqDesc read_desc(Reader& in) {
  PvirtqDesc d{};
  d.addr = in.u64();
  d.len = in.u32();
  d.id = in.u16();
  d.flags = in.u16();
  return d;
}

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
  bool in_order;
  uint64_t desc;
  uint64_t driver;
  uint64_t device;
};

Layout decode_layout(Reader& in, bool& two_regions) {
  Layout l{};
  const uint8_t s = in.u8();
  l.size = s == 0 ? kMaxSize : s;
  const uint8_t f = in.u8();
  l.event_idx = (f & 1) != 0;
  l.indirect = (f & 2) != 0;
  l.in_order = (f & 0x40) != 0;
  two_regions = (f & 4) != 0;
  const uint64_t base = (two_regions && (f & 8) != 0) ? kRegion1Gpa : kRegion0Gpa;
  l.desc = base + 0x1000;
  l.driver = base + 0x8000 + ((f & 0x20) != 0 ? 2 : 0);
  l.device = base + 0x8010;
  if ((f & 0x10) != 0) {
    // Straddles the end of its region: validate() must refuse it.
    const uint64_t end = base == kRegion1Gpa ? kRegion1Gpa + kRegion1Size : kRegion0Size;
    l.desc = end - 16;
  }
  return l;
}

template <class T>
void poke(const GuestMemory& mem, uint64_t gpa, const T& v) {
  (void)mem.write_obj(gpa, v);
}

bool configure(PackedQueue& q, const GuestMemory& mem, const Layout& l) {
  q.reset();
  if (!q.set_size(l.size)) return false;
  q.set_desc_ring(l.desc);
  q.set_driver_event_area(l.driver);
  q.set_device_event_area(l.device);
  q.set_event_idx(l.event_idx);
  q.set_indirect(l.indirect);
  q.set_in_order(l.in_order);
  if (!q.validate(mem)) {
    check(q.broken());
    return false;
  }
  q.set_ready(true);
  return true;
}

void check_chain(const GuestMemory& mem, const PackedQueue& q, const DescriptorChain& c) {
  check(c.head < q.size());
  check(c.desc_count >= 1 && c.desc_count <= q.size());
  check(!c.segments.empty());
  check(c.segments.size() <= std::max<size_t>(q.size(), PackedQueue::kMaxIndirectEntries));
  // More segments than slots only through one indirect table, which takes one slot.
  if (c.segments.size() != c.desc_count) check(c.desc_count == 1);
  uint64_t readable = 0;
  uint64_t writable = 0;
  bool seen_write = false;
  for (const Segment& s : c.segments) {
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

struct Held {
  uint16_t id;
  uint16_t slots;
};

// The inflight area (op 13), sized for the largest queue, zeroed per input.
std::vector<uint8_t>& inflight_area() {
  static std::vector<uint8_t> a(iovirt::virtio::inflight_packed_queue_bytes(kMaxSize));
  return a;
}

// unclaimed: slots of recovered buffers the queue holds but pop() has not returned yet.
void check_state(const PackedQueue& q, const std::vector<Held>& held, uint32_t unclaimed) {
  uint32_t slots = unclaimed;
  for (const Held& h : held) slots += h.slots;
  check(q.in_flight_slots() == slots);
  check(q.in_flight_slots() <= q.size());
  check(q.next_avail() < q.size());
  check(q.next_used() < q.size());
}

// Returns held buffer `pick` (mod the count) with push() or push_deferred(): on success it is no
// longer held and next_used moved past its slots; a refusal only from a broken or idle queue.
void push_held(PackedQueue& q, const GuestMemory& mem, std::vector<Held>& held, uint8_t pick,
               uint32_t len, bool deferred, bool was_broken) {
  if (held.empty()) return;
  const size_t i = pick % held.size();
  const Held h = held[i];
  const uint16_t before = q.next_used();
  auto r = deferred ? q.push_deferred(mem, h.id, h.slots, len) : q.push(mem, h.id, h.slots, len);
  if (r) {
    check(!was_broken);
    held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
    check(q.next_used() == (before + h.slots) % q.size());
  } else {
    check(was_broken || !q.ready());
  }
}

void run_ops(Reader& in, PackedQueue& q, const GuestMemory& mem, const Layout& l) {
  using namespace iovirt::virtio;
  std::vector<Held> held;
  uint32_t unclaimed = 0;
  bool restored = false;  // positions set by op 12 since the area was attached: not in the area
  for (int steps = 0; !in.empty() && steps < 512; ++steps) {
    const bool was_broken = q.broken();
    const QueueFault was_fault = q.fault();
    switch (in.u8() % 17) {
      case 0:
      case 1: {  // pop (twice as likely)
        const size_t pending = q.resubmit_pending();
        auto r = q.pop(mem);
        if (r && *r && q.resubmit_pending() < pending) {
          check(unclaimed >= (*r)->desc_count);  // a recovered buffer, counted at attach
          unclaimed -= (*r)->desc_count;
        }
        if (r) {
          check(!was_broken);
          if (verbose()) {
            std::fprintf(
                stderr, "pop: %s\n",
                *r ? ("id " + std::to_string((*r)->head) + ", " + std::to_string((*r)->desc_count) +
                      " slots, " + std::to_string((*r)->segments.size()) + " segments")
                         .c_str()
                   : "empty");
          }
          if (*r) {
            check_chain(mem, q, **r);
            for (const Held& h : held) check(h.id != (*r)->head);
            held.push_back(Held{(*r)->head, (*r)->desc_count});
          }
        } else {
          if (verbose()) std::fprintf(stderr, "pop: %s\n", r.error().message().c_str());
          check(q.broken() || !q.ready());
        }
        break;
      }
      case 2: {  // push of raw operands (device bug unless they match a held buffer)
        const uint16_t id = in.u16();
        const uint16_t count = in.u16();
        const uint32_t len = in.u32();
        const uint16_t before = q.next_used();
        auto r = q.push(mem, id, count, len);
        if (r) {
          check(!was_broken);
          bool found = false;
          for (size_t i = 0; i < held.size(); ++i) {
            if (held[i].id == id && held[i].slots == count) {
              held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
              found = true;
              break;
            }
          }
          check(found);
          check(q.next_used() == (before + count) % q.size());
        }
        break;
      }
      case 3: {  // push one held buffer, any of them: out-of-order completion
        const uint8_t pick = in.u8();
        push_held(q, mem, held, pick, in.u32(), false, was_broken);
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
      case 7: {  // guest: rewrite one descriptor, raw
        const uint16_t i = static_cast<uint16_t>(in.u8() % l.size);
        poke(mem, l.desc + 16ull * i, read_desc(in));
        break;
      }
      case 8: {  // guest: one descriptor made available for a given lap (AVAIL/USED forced)
        const uint16_t i = static_cast<uint16_t>(in.u8() % l.size);
        PvirtqDesc d = read_desc(in);
        const bool wrap = (in.u8() & 1) != 0;
        d.flags = static_cast<uint16_t>((d.flags & ~(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) |
                                        packed_avail_bits(wrap));
        poke(mem, l.desc + 16ull * i, d);
        break;
      }
      case 9: {  // guest: driver event suppression
        const uint16_t off_wrap = in.u16();
        const uint16_t flags = in.u16();
        poke(mem, l.driver + event_off_wrap_offset(), off_wrap);
        poke(mem, l.driver + event_flags_offset(), flags);
        break;
      }
      case 10: {  // guest: one indirect table entry
        const uint64_t i = in.u8() % 64;
        poke(mem, kIndirectGpa + 16 * i, read_desc(in));
        break;
      }
      case 11:  // device reset and re-setup (the only way out of broken)
        held.clear();
        unclaimed = 0;
        if (configure(q, mem, l)) check(!q.broken());
        continue;
      case 14: {  // pop_direct: a burst of one-descriptor buffers
        std::array<DirectChain, 8> out{};
        const size_t n = 1 + in.u8() % out.size();
        const uint32_t prefetch = (in.u8() & 1) != 0 ? 0 : SplitQueue::kNoPrefetch;
        auto r = q.pop_direct(mem, std::span(out.data(), n), prefetch);
        if (r) {
          check(!was_broken);
          check(r->count <= n);
          for (uint32_t i = 0; i < r->count; ++i) {
            check(out[i].head < q.size());
            auto sp = mem.span(out[i].seg.addr, out[i].seg.len);
            check(sp.has_value() && sp->data() == out[i].host);
            for (const Held& h : held) check(h.id != out[i].head);
            held.push_back(Held{out[i].head, 1});
          }
        } else {
          check(q.broken() || !q.ready());
        }
        break;
      }
      case 15: {  // push_deferred of one held buffer, any of them
        const uint8_t pick = in.u8();
        const uint32_t len = (in.u8() & 1) != 0 ? in.u32() : 0;
        push_held(q, mem, held, pick, len, true, was_broken);
        break;
      }
      case 16: {
        auto r = q.publish_used(mem);
        if (r) check(!was_broken);
        break;
      }
      case 13: {  // inflight: attach a fresh area, or crash and let a successor attach it
        const uint8_t mode = in.u8();
        auto& area = inflight_area();
        if ((mode & 1) == 0) {
          if (!held.empty() || unclaimed != 0) {
            // Refused while buffers are held (on another area: this one may be the live record).
            static std::vector<uint8_t> other(area.size());
            check(!q.attach_inflight(mem, other).has_value());
            break;
          }
          std::fill(area.begin(), area.end(), uint8_t{0});
          auto r = q.attach_inflight(mem, area);
          if (r) check(held.empty() && unclaimed == 0 && !was_broken && q.inflight_attached());
          // A gap between the positions with nothing held (op 12 set them apart) is not
          // something the area records: a later crash then need not resume exactly.
          if (r) restored = q.avail_state() != q.used_state();
          break;
        }
        if (was_broken || !q.inflight_attached()) break;
        // The crash: what the successor must find again.
        const uint16_t avail = q.avail_state();
        const uint16_t used = q.used_state();
        const uint32_t slots = q.in_flight_slots();
        std::vector<Held> before = held;
        const uint32_t unclaimed_before = unclaimed;  // held too, ids not yet seen
        const unsigned scribbles = (mode >> 1) % 4;  // 0: the area as the queue left it
        for (unsigned k = 0; k < scribbles; ++k) {
          const size_t at = in.u16() % area.size();
          area[at] = in.u8();
        }
        held.clear();
        unclaimed = 0;
        if (!configure(q, mem, l)) break;
        auto r = q.attach_inflight(mem, area);
        const bool exact = scribbles == 0 && !restored;
        restored = false;
        if (r) unclaimed = q.in_flight_slots();
        if (verbose()) {
          std::fprintf(stderr, "crash: %04x/%04x, %u slots held -> %s: %04x/%04x, %u slots\n",
                       avail, used, slots, r ? "attached" : r.error().message().c_str(),
                       q.avail_state(), q.used_state(), q.in_flight_slots());
        }
        if (exact) {
          // A crash-free record is always accepted and resumes exactly.
          check(r.has_value());
          check(q.avail_state() == avail && q.used_state() == used);
          check(q.in_flight_slots() == slots);
          std::vector<Held> again;
          while (q.resubmit_pending() > 0) {
            auto c = q.pop(mem);
            // An indirect table the guest rewrote while its buffer was in flight may fault.
            if (!c) break;
            check(c->has_value());
            check_chain(mem, q, **c);
            again.push_back(Held{(*c)->head, (*c)->desc_count});
            unclaimed -= (*c)->desc_count;
          }
          if (!q.broken()) {
            // Every buffer held comes back once, and nothing else (beyond those still
            // unclaimed from an earlier recovery).
            uint32_t extra = 0;
            for (const Held& a : again) {
              const auto it = std::find_if(before.begin(), before.end(),
                                           [&](const Held& b) { return b.id == a.id; });
              if (it == before.end()) {
                extra += a.slots;
              } else {
                check(it->slots == a.slots);
                before.erase(it);
              }
            }
            check(before.empty());
            check(extra == unclaimed_before);
          }
          held = std::move(again);
        }
        check_state(q, held, unclaimed);
        continue;
      }
      case 12: {  // restore positions (vhost SET_VRING_BASE); refused outside the ring
        const uint16_t v = in.u16();
        const bool used = (in.u8() & 1) != 0;
        auto r = used ? q.set_used_state(v) : q.set_avail_state(v);
        restored = restored || (r.has_value() && q.inflight_attached());
        check(r.has_value() == ((v & PACKED_OFFSET_MASK) < q.size()));
        break;
      }
    }
    check_state(q, held, unclaimed);
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

  const unsigned ndesc = in.u8() % (l.size + 1u);
  for (unsigned i = 0; i < ndesc; ++i) poke(mem, l.desc + 16ull * i, read_desc(in));
  poke(mem, l.driver + event_off_wrap_offset(), in.u16());
  poke(mem, l.driver + event_flags_offset(), in.u16());
  const unsigned nind = in.u8() % 65u;
  for (unsigned i = 0; i < nind; ++i) poke(mem, kIndirectGpa + 16ull * i, read_desc(in));

  static auto queue = PackedQueue::create(kMaxSize);
  check(queue.has_value());
  PackedQueue& q = *queue;
  std::fill(inflight_area().begin(), inflight_area().end(), uint8_t{0});
  configure(q, mem, l);
  run_ops(in, q, mem, l);
  return 0;
}
