#include "iovirt/virtio/packed_queue.hpp"

#include <algorithm>
#include <bit>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>

#include "iovirt/core/hex.hpp"
#include "buffer_prefetch.hpp"

namespace iovirt::virtio {

namespace {

// Descriptor flags and the event suppression fields are shared with a running guest: access
// them as 16-bit atomics (alignment is checked by validate(), bounds by GuestMemory::span).
Result<uint16_t> load_u16(const GuestMemory& mem, uint64_t gpa, std::memory_order order) {
  auto s = mem.span(gpa, 2);
  if (!s) return std::unexpected(std::move(s.error()));
  auto* p = reinterpret_cast<uint16_t*>(s->data());
  return std::atomic_ref<uint16_t>(*p).load(order);
}

Status store_u16(const GuestMemory& mem, uint64_t gpa, uint16_t v, std::memory_order order) {
  auto s = mem.span(gpa, 2);
  if (!s) return std::unexpected(std::move(s.error()));
  auto* p = reinterpret_cast<uint16_t*>(s->data());
  std::atomic_ref<uint16_t>(*p).store(v, order);
  return {};
}

std::unexpected<Error> refuse(QueueFault f) {
  return fail(std::string("virtq: ") + to_string(f));
}

}  // namespace

PackedQueue::PackedQueue(uint32_t max_size)
    : max_size_(max_size), size_(max_size), inflight_(max_size, 0), pending_(max_size) {
  // A chain is either up to size direct descriptors or one indirect table (section 2.8.19: an
  // indirect descriptor is never part of a NEXT chain).
  segs_.resize(std::max<size_t>(max_size, kMaxIndirectEntries));
}

Result<PackedQueue> PackedQueue::create(uint16_t max_size) {
  if (max_size == 0) {
    return fail(std::string("virtq: ") + to_string(QueueFault::InvalidSize) +
                " 0 (a packed ring needs 1 to 32768 entries)");
  }
  return PackedQueue(max_size);
}

Status PackedQueue::set_size(uint32_t size) {
  if (size == 0 || size > max_size_) {
    return fault(QueueFault::InvalidSize,
                 std::to_string(size) + " (1 to " + std::to_string(max_size_) + ")");
  }
  size_ = size;
  return {};
}

void PackedQueue::reset() {
  size_ = max_size_;
  desc_gpa_ = driver_gpa_ = device_gpa_ = 0;
  ready_ = event_idx_ = indirect_ = in_order_ = false;
  next_avail_ = next_used_ = 0;
  avail_wrap_ = used_wrap_ = true;
  used_since_signal_ = 0;
  std::fill(inflight_.begin(), inflight_.end(), uint16_t{0});
  inflight_slots_ = 0;
  fault_ = QueueFault::None;
  npending_ = 0;
  pending_slots_ = 0;
  detach_inflight();
}

void PackedQueue::detach_inflight() {
  inf_hdr_ = nullptr;
  inf_desc_ = nullptr;
  inf_free_.clear();
  resubmit_.clear();
}

Status PackedQueue::set_avail_state(uint16_t v) {
  const uint16_t pos = v & PACKED_OFFSET_MASK;
  if (pos >= size_) {
    return fail("virtq: avail position " + std::to_string(pos) + " outside the queue of " +
                std::to_string(size_) + " (set the queue size first)");
  }
  next_avail_ = pos;
  avail_wrap_ = (v & PACKED_WRAP_BIT) != 0;
  return {};
}

Status PackedQueue::set_used_state(uint16_t v) {
  const uint16_t pos = v & PACKED_OFFSET_MASK;
  if (pos >= size_) {
    return fail("virtq: used position " + std::to_string(pos) + " outside the queue of " +
                std::to_string(size_) + " (set the queue size first)");
  }
  next_used_ = pos;
  used_wrap_ = (v & PACKED_WRAP_BIT) != 0;
  used_since_signal_ = 0;
  return {};
}

std::unexpected<Error> PackedQueue::fault(QueueFault f, const std::string& detail) {
  if (fault_ == QueueFault::None) fault_ = f;
  return fail(std::string("virtq: ") + to_string(f) + " (" + detail + ")");
}

// Only a validated, enabled queue's areas are known to be aligned and inside memory.
Status PackedQueue::check_usable() const {
  if (broken()) return refuse(QueueFault::Broken);
  if (!ready_) return refuse(QueueFault::NotReady);
  return {};
}

Status PackedQueue::validate(const GuestMemory& mem) {
  if (size_ == 0 || size_ > max_size_) return fault(QueueFault::InvalidSize, std::to_string(size_));
  struct Area {
    const char* name;
    uint64_t gpa;
    uint64_t bytes;
    uint64_t align;
  };
  const Area areas[] = {
      {"descriptor ring", desc_gpa_, pdesc_area_bytes(size_), PVIRTQ_DESC_ALIGN},
      {"driver event suppression", driver_gpa_, event_area_bytes(), PVIRTQ_EVENT_ALIGN},
      {"device event suppression", device_gpa_, event_area_bytes(), PVIRTQ_EVENT_ALIGN},
  };
  for (const Area& a : areas) {
    if (a.gpa % a.align != 0) {
      return fault(QueueFault::RingMisaligned, std::string(a.name) + " at " + hex(a.gpa) +
                                                   " needs " + std::to_string(a.align) +
                                                   "-byte alignment");
    }
    if (!mem.span(a.gpa, a.bytes)) {
      return fault(QueueFault::RingOutsideMemory,
                   std::string(a.name) + " [" + hex(a.gpa) + ", +" + hex(a.bytes) + ")");
    }
  }
  return {};
}

// Section 2.8.21.1 / 2.8.22: the driver writes the descriptor, then (after a write barrier) its
// flags; reading the flags with acquire makes the rest of the descriptor, and of the chain it
// heads, at least as new.
Result<uint16_t> PackedQueue::load_desc_flags(const GuestMemory& mem, uint32_t slot) {
  auto f = load_u16(mem, desc_gpa_ + pdesc_flags_offset(slot), std::memory_order_acquire);
  if (!f) return fault(QueueFault::RingAccess, "read descriptor flags: " + f.error().message());
  return *f;
}

Result<std::optional<DescriptorChain>> PackedQueue::pop(const GuestMemory& mem) {
  if (auto st = check_usable(); !st) return std::unexpected(std::move(st.error()));
  if (!resubmit_.empty()) return pop_resubmit(mem);  // a predecessor's buffers first

  // One lookup for the head descriptor; its flags are read first, with acquire (2.8.21.1).
  auto head = mem.span(desc_gpa_ + pdesc_offset(next_avail_), sizeof(PvirtqDesc));
  if (!head) return fault(QueueFault::RingAccess, "read descriptor: " + head.error().message());
  const uint16_t head_flags =
      std::atomic_ref<uint16_t>(
          *reinterpret_cast<uint16_t*>(head->data() + offsetof(PvirtqDesc, flags)))
          .load(std::memory_order_acquire);
  if (!packed_is_avail(head_flags, avail_wrap_)) return std::optional<DescriptorChain>{};

  segs_.start();
  uint32_t slots = 0;  // ring slots taken
  uint32_t pos = next_avail_;
  bool wrap = avail_wrap_;
  uint16_t id = 0;
  for (;;) {
    // Section 2.8.18: a list is never longer than the queue size (so it never laps itself).
    if (slots == size_) {
      return fault(QueueFault::ChainTooLong, "NEXT still set after " + std::to_string(size_) +
                                                 " descriptors from slot " +
                                                 std::to_string(next_avail_));
    }
    PvirtqDesc d;
    uint16_t flags;
    if (slots == 0) {
      std::memcpy(&d, head->data(), sizeof(d));
      flags = head_flags;  // the value read with acquire (the guest may change it meanwhile)
    } else {
      auto r = mem.read_obj<PvirtqDesc>(desc_gpa_ + pdesc_offset(pos));
      if (!r) return fault(QueueFault::RingAccess, "read descriptor: " + r.error().message());
      d = *r;
      flags = d.flags;
    }
    // Section 2.8.6: every descriptor of the list carries the AVAIL/USED bits of its lap.
    if (slots != 0 && !packed_is_avail(flags, wrap)) {
      return fault(QueueFault::DescNotAvailable, "slot " + std::to_string(pos) + " (descriptor " +
                                                     std::to_string(slots) + " of the chain at " +
                                                     std::to_string(next_avail_) + ")");
    }
    if (inf_hdr_ != nullptr) {  // slots < size_ here (checked above)
      pop_descs_[slots] = d;
      pop_descs_[slots].flags = flags;
    }
    ++slots;
    if (++pos == size_) {
      pos = 0;
      wrap = !wrap;
    }
    if (flags & VIRTQ_DESC_F_INDIRECT) {
      // Section 2.8.19: only with the feature, and never in a list linked by NEXT.
      if (!indirect_) {
        return fault(QueueFault::IndirectNotNegotiated, "slot " + std::to_string(next_avail_));
      }
      if (flags & VIRTQ_DESC_F_NEXT) {
        return fault(QueueFault::IndirectWithNext, "slot " + std::to_string(next_avail_));
      }
      if (slots != 1) {
        return fault(QueueFault::IndirectInChain, "descriptor " + std::to_string(slots - 1) +
                                                      " of the chain at " +
                                                      std::to_string(next_avail_));
      }
      if (auto st = walk_indirect(mem, d); !st) return std::unexpected(st.error());
      id = d.id;
      break;
    }
    if (auto st = append(mem, d, (flags & VIRTQ_DESC_F_WRITE) != 0); !st) {
      return std::unexpected(st.error());
    }
    if (!(flags & VIRTQ_DESC_F_NEXT)) {
      id = d.id;  // section 2.8.6: the buffer id is in the last descriptor of the list
      break;
    }
  }

  if (auto st = check_take(id, slots); !st) return std::unexpected(std::move(st.error()));
  if (inf_hdr_ != nullptr) record_pop(id, slots);
  inflight_[id] = static_cast<uint16_t>(slots);
  inflight_slots_ += slots;
  next_avail_ = static_cast<uint16_t>(pos);
  avail_wrap_ = wrap;
  return std::optional<DescriptorChain>(DescriptorChain{id, static_cast<uint16_t>(slots),
                                                        segs_.segments(), segs_.readable_len(),
                                                        segs_.writable_len()});
}

// pop(), pop_direct(): buffer `id` at next_avail, taking `slots` ring slots, may be taken.
Status PackedQueue::check_take(uint16_t id, uint32_t slots) {
  if (id >= size_) {
    return fault(QueueFault::BufferIdOutOfRange, "id " + std::to_string(id) + " at slot " +
                                                     std::to_string(next_avail_) + ", queue size " +
                                                     std::to_string(size_));
  }
  if (inflight_[id] != 0) {
    return fault(QueueFault::BufferIdInUse, "id " + std::to_string(id) + " at slot " +
                                                std::to_string(next_avail_) +
                                                " is still held by the device");
  }
  // Slots whose used descriptors are reserved but not yet written (push_deferred) are still
  // the device's: a driver that made more buffers available cannot have had them back.
  if (inflight_slots_ + pending_slots_ + slots > size_) {
    return fault(QueueFault::RingOverrun, std::to_string(inflight_slots_ + pending_slots_) +
                                              " + " + std::to_string(slots) +
                                              " slots, queue size " + std::to_string(size_));
  }
  return {};
}

Result<DirectPop> PackedQueue::pop_direct(const GuestMemory& mem, std::span<DirectChain> out,
                                          uint32_t prefetch_from, uint32_t prefetch_len) {
  if (auto st = check_usable(); !st) return std::unexpected(std::move(st.error()));
  DirectPop r;
  if (!resubmit_.empty()) {  // pop() returns those first
    r.blocked = true;
    return r;
  }
  // validate() put the ring inside guest memory; a failure here means the map changed.
  auto ring = mem.span(desc_gpa_, pdesc_area_bytes(size_));
  if (!ring) return fault(QueueFault::RingAccess, "read descriptor: " + ring.error().message());
  uint8_t* const base = ring->data();
  // A fault after some buffers were taken breaks the queue but returns those (the caller owns
  // them now, and the next call reports the fault); a fault on the first is the result.
  auto stop = [&r](std::unexpected<Error> e) -> Result<DirectPop> {
    if (r.count == 0) return e;
    return r;
  };
  for (size_t i = 0; i < out.size(); ++i) {
    uint8_t* const slot = base + pdesc_offset(next_avail_);
    // Entering a descriptor line: ask for the next one now, so its transfer from the driver's
    // CPU overlaps this line's four buffers instead of following them.
    if ((next_avail_ & 3) == 0 && next_avail_ + 4u < size_) __builtin_prefetch(slot + 64, 0);
    // As pop(): the flags first, with acquire (section 2.8.21.1), then the rest of it.
    const uint16_t flags =
        std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(slot + offsetof(PvirtqDesc, flags)))
            .load(std::memory_order_acquire);
    if (!packed_is_avail(flags, avail_wrap_)) break;  // nothing more available
    if ((flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) != 0) {
      r.blocked = true;
      break;
    }
    PvirtqDesc d;
    std::memcpy(&d, slot, sizeof d);
    d.flags = flags;  // the value read with acquire (the guest may change it meanwhile)
    // check_take()'s three tests inline (it reports the fault): a call per buffer that builds
    // a Status in memory showed in io-forward (packed, 13.8 -> 14.8 Mpps).
    if (d.id >= size_ || inflight_[d.id] != 0 || inflight_slots_ + pending_slots_ + 1 > size_) {
      if (auto st = check_take(d.id, 1); !st) return stop(std::unexpected(std::move(st.error())));
    }
    auto buf = mem.span(d.addr, d.len);
    if (!buf) {
      return stop(fault(QueueFault::BufferOutsideMemory,
                        "[" + hex(d.addr) + ", +" + hex(d.len) + ") at slot " +
                            std::to_string(next_avail_)));
    }
    const bool write = (flags & VIRTQ_DESC_F_WRITE) != 0;
    out[i] = DirectChain{d.id, Segment{d.addr, d.len, write}, buf->data()};
    if (prefetch_from != SplitQueue::kNoPrefetch)
      prefetch_buffer(buf->data(), d.len, prefetch_from, prefetch_len, write);
    if (inf_hdr_ != nullptr) {
      pop_descs_[0] = d;
      record_pop(d.id, 1);
    }
    inflight_[d.id] = 1;
    ++inflight_slots_;
    if (++next_avail_ == size_) {
      next_avail_ = 0;
      avail_wrap_ = !avail_wrap_;
    }
    ++r.count;
  }
  return r;
}

// Section 2.8.19: the table is len / 16 consecutive descriptors. Only WRITE is meaningful in it;
// NEXT and the ids are ignored. INDIRECT inside the table is a driver MUST NOT that would mean
// nothing to the device: refused, like in the split ring.
Status PackedQueue::walk_indirect(const GuestMemory& mem, const PvirtqDesc& table) {
  if (table.len == 0 || table.len % sizeof(PvirtqDesc) != 0) {
    return fault(QueueFault::IndirectBadLength,
                 "len " + std::to_string(table.len) + " is not a nonzero multiple of 16");
  }
  const uint32_t entries = table.len / sizeof(PvirtqDesc);
  if (entries > kMaxIndirectEntries) {
    return fault(QueueFault::IndirectTooLarge, std::to_string(entries) + " entries, at most " +
                                                   std::to_string(kMaxIndirectEntries));
  }
  if (!mem.span(table.addr, table.len)) {
    return fault(QueueFault::IndirectOutsideMemory,
                 "[" + hex(table.addr) + ", +" + hex(table.len) + ")");
  }
  for (uint32_t i = 0; i < entries; ++i) {
    auto d = mem.read_obj<PvirtqDesc>(table.addr + 16ull * i);
    if (!d) {
      return fault(QueueFault::RingAccess, "read indirect descriptor: " + d.error().message());
    }
    if (d->flags & VIRTQ_DESC_F_INDIRECT) {
      return fault(QueueFault::NestedIndirect, "entry " + std::to_string(i));
    }
    if (auto st = append(mem, *d, (d->flags & VIRTQ_DESC_F_WRITE) != 0); !st) return st;
  }
  return {};
}

Status PackedQueue::append(const GuestMemory& mem, const PvirtqDesc& d, bool write) {
  // Both walks are bounded (size, or kMaxIndirectEntries); the buffer bound is checked anyway.
  auto v = segs_.append(mem, d.addr, d.len, write, QueueFault::ChainTooLong);
  if (v) return fault(v->fault, v->detail);
  return {};
}

Status PackedQueue::check_push(uint16_t id, uint16_t desc_count) {
  if (auto st = check_usable(); !st) return st;
  if (id >= size_) {
    return fault(QueueFault::UsedHeadOutOfRange,
                 "id " + std::to_string(id) + ", queue size " + std::to_string(size_));
  }
  if (desc_count == 0 || inflight_[id] != desc_count) {
    return fault(QueueFault::UsedIdNotInFlight,
                 "id " + std::to_string(id) + " with " + std::to_string(desc_count) +
                     " slots; the device holds it with " + std::to_string(inflight_[id]));
  }
  for (const Recovered& r : resubmit_) {  // empty but after attach_inflight() recovered buffers
    if (r.id == id) {
      return fault(QueueFault::UsedIdNotInFlight,
                   "id " + std::to_string(id) + " was recovered but not yet returned by pop()");
    }
  }
  return {};
}

Status PackedQueue::push_deferred_slow(const GuestMemory& mem, uint16_t id, uint16_t desc_count,
                                       uint32_t written) {
  if (inf_hdr_ != nullptr) return push(mem, id, desc_count, written);
  // The inline push_deferred() did not take it: a fault, an id not held, recovered buffers still
  // to be returned, or a full batch. check_push() reports the first three.
  if (auto st = check_push(id, desc_count); !st) return st;
  // pop() keeps held + pending slots within the ring, so npending_ < pending_.size() here; the
  // guard keeps the array in bounds whatever happens.
  if (npending_ == pending_.size()) {
    if (auto st = publish_used(mem); !st) return st;
  }
  pending_[npending_++] = PendingUsed{next_used_, id, written, used_flags(written)};
  pending_slots_ += desc_count;
  retire(id, desc_count);
  return {};
}

Status PackedQueue::publish_used(const GuestMemory& mem) {
  if (auto st = check_usable(); !st) return st;
  if (npending_ == 0) return {};
  auto ring = mem.span(desc_gpa_, pdesc_area_bytes(size_));
  if (!ring)
    return fault(QueueFault::RingAccess, "write used descriptor: " + ring.error().message());
  uint8_t* const base = ring->data();
  const uint32_t n = npending_;
  npending_ = 0;
  pending_slots_ = 0;
  static_assert(std::endian::native == std::endian::little, "descriptors are little-endian");
  // len, id and flags are bytes 8..15 of a descriptor (8-byte aligned: validate() checked the
  // ring's 16-byte alignment), written as one 8-byte store: the flags that publish a descriptor
  // can then never be seen without its id and length (section 2.8.21 asks for them after), and
  // each descriptor costs one store instead of three. The driver reads used descriptors in
  // order, so the first one is written last and the batch appears to it at once.
  auto word = [&](uint32_t i) {
    const PendingUsed& u = pending_[i];
    return uint64_t{u.len} | (uint64_t{u.id} << 32) | (uint64_t{u.flags} << 48);
  };
  auto at = [&](uint32_t i) {
    return reinterpret_cast<uint64_t*>(base + pdesc_offset(pending_[i].slot) +
                                       offsetof(PvirtqDesc, len));
  };
  bool whole_batch = in_order_ && n > 1;
  for (uint32_t i = 0; i < n && whole_batch; ++i) whole_batch = pending_[i].len == 0;
  if (whole_batch) {
    // Section 2.8.23: one used descriptor for the batch, at its first slot (so in that slot's
    // lap) with the last buffer's id; the driver frees every buffer up to that one and skips
    // the slots they took. Only where no length is lost: buffers the device wrote nothing into.
    const PendingUsed& first = pending_[0];
    const uint64_t w = uint64_t{pending_[n - 1].id} << 32 | uint64_t{first.flags} << 48;
    std::atomic_ref<uint64_t>(*at(0)).store(w, std::memory_order_release);
    return {};
  }
  for (uint32_t i = 1; i < n; ++i) {
    std::atomic_ref<uint64_t>(*at(i)).store(word(i), std::memory_order_relaxed);
  }
  std::atomic_ref<uint64_t>(*at(0)).store(word(0), std::memory_order_release);
  return {};
}

Status PackedQueue::push(const GuestMemory& mem, uint16_t id, uint16_t desc_count,
                         uint32_t written) {
  if (npending_ > 0) {  // in ring order
    if (auto st = publish_used(mem); !st) return st;
  }
  if (auto st = check_push(id, desc_count); !st) return st;
  // Section 2.8.21: id and len first, the flags that publish them last with release ordering.
  // One lookup for the three fields (bytes 8..15 of the descriptor).
  auto tail = mem.span(desc_gpa_ + pdesc_offset(next_used_) + offsetof(PvirtqDesc, len), 8);
  if (!tail)
    return fault(QueueFault::RingAccess, "write used descriptor: " + tail.error().message());
  uint16_t inf_entry = 0;
  if (inf_hdr_ != nullptr) {
    // Being completed at next_used (inflight.hpp); the release store of the used flags below
    // orders these before the descriptor becomes visible.
    inf_entry = inf_head_[id];
    inf_hdr_->old_used_idx = next_used_;
    inf_hdr_->old_used_wrap_counter = used_wrap_ ? 1 : 0;
    std::atomic_ref<uint8_t>(inf_desc_[inf_entry].inflight)
        .store(kInflightPackedCompleting, std::memory_order_release);
  }
  uint8_t* p = tail->data();
  std::memcpy(p, &written, sizeof(written));
  std::memcpy(p + (offsetof(PvirtqDesc, id) - offsetof(PvirtqDesc, len)), &id, sizeof(id));
  auto* fp =
      reinterpret_cast<uint16_t*>(p + (offsetof(PvirtqDesc, flags) - offsetof(PvirtqDesc, len)));
  std::atomic_ref<uint16_t>(*fp).store(used_flags(written), std::memory_order_release);
  retire(id, desc_count);
  if (inf_hdr_ != nullptr) {
    inf_hdr_->used_idx = next_used_;
    inf_hdr_->used_wrap_counter = used_wrap_ ? 1 : 0;
    std::atomic_ref<uint8_t>(inf_desc_[inf_entry].inflight).store(0, std::memory_order_release);
    uint16_t e = inf_entry;
    for (uint16_t k = 0; k < desc_count; ++k) {
      inf_free_.push_back(e);
      e = inf_next_[e];
    }
  }
  return {};
}

Result<bool> PackedQueue::needs_notification(const GuestMemory& mem) {
  if (auto st = check_usable(); !st) return std::unexpected(std::move(st.error()));
  if (auto st = publish_used(mem); !st) return std::unexpected(std::move(st.error()));
  // The used flags store must be visible before reading the driver's suppression state, or the
  // driver may re-enable interrupts in between and never get one (section 2.8.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  auto area = mem.span(driver_gpa_, event_area_bytes());
  if (!area) return fault(QueueFault::RingAccess, "read driver event: " + area.error().message());
  auto* ev = reinterpret_cast<uint16_t*>(area->data());
  const uint16_t flags =
      std::atomic_ref<uint16_t>(ev[event_flags_offset() / 2]).load(std::memory_order_relaxed);
  const uint16_t off_wrap =
      std::atomic_ref<uint16_t>(ev[event_off_wrap_offset() / 2]).load(std::memory_order_relaxed);
  const uint32_t used = used_since_signal_;
  used_since_signal_ = 0;
  const uint16_t mode = flags & RING_EVENT_FLAGS_MASK;
  if (mode == RING_EVENT_FLAGS_DISABLE) return false;
  // DESC without EVENT_IDX and the reserved value 3 are treated as ENABLE: an extra interrupt
  // is harmless, a lost one hangs the driver.
  if (mode != RING_EVENT_FLAGS_DESC || !event_idx_) return true;
  if (used == 0) return false;
  // A whole lap since the last decision: the event slot was certainly written.
  if (used >= size_) return true;
  // Section 2.8.10: notify iff the event slot (off, wrap) lies among the slots used since the
  // last decision, [new - used, new). The event is moved into the device's current lap's
  // numbering (an event of the other lap becomes off - size); positions then compare in
  // wrapping 16-bit arithmetic like the split ring's event index.
  const auto new_pos = next_used_;
  const auto old_pos = static_cast<uint16_t>(new_pos - used);
  auto event = static_cast<uint16_t>(off_wrap & PACKED_OFFSET_MASK);
  const bool event_wrap = (off_wrap & PACKED_WRAP_BIT) != 0;
  if (event_wrap != used_wrap_) event = static_cast<uint16_t>(event - size_);
  return vring_need_event(event, new_pos, old_pos);
}

Status PackedQueue::write_device_event(const GuestMemory& mem, uint16_t off_wrap, uint16_t flags) {
  if (auto st = store_u16(mem, device_gpa_ + event_off_wrap_offset(), off_wrap,
                          std::memory_order_relaxed);
      !st) {
    return fault(QueueFault::RingAccess, "write device event off_wrap: " + st.error().message());
  }
  if (auto st =
          store_u16(mem, device_gpa_ + event_flags_offset(), flags, std::memory_order_release);
      !st) {
    return fault(QueueFault::RingAccess, "write device event flags: " + st.error().message());
  }
  return {};
}

Status PackedQueue::disable_notification(const GuestMemory& mem) {
  if (auto st = check_usable(); !st) return st;
  auto cur = load_u16(mem, device_gpa_ + event_off_wrap_offset(), std::memory_order_relaxed);
  if (!cur) return fault(QueueFault::RingAccess, "read device event: " + cur.error().message());
  return write_device_event(mem, *cur, RING_EVENT_FLAGS_DISABLE);
}

Result<bool> PackedQueue::enable_notification(const GuestMemory& mem) {
  if (auto st = check_usable(); !st) return std::unexpected(std::move(st.error()));
  Status st;
  if (event_idx_) {
    // Kick me when the descriptor at next_avail (in this lap) becomes available.
    st = write_device_event(mem, avail_state(), RING_EVENT_FLAGS_DESC);
  } else {
    auto cur = load_u16(mem, device_gpa_ + event_off_wrap_offset(), std::memory_order_relaxed);
    if (!cur) return fault(QueueFault::RingAccess, "read device event: " + cur.error().message());
    st = write_device_event(mem, *cur, RING_EVENT_FLAGS_ENABLE);
  }
  if (!st) return std::unexpected(std::move(st.error()));
  // Order the store above before re-reading the next descriptor: a buffer made available
  // before the driver saw the re-enabled notification would otherwise be missed.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  auto flags = load_desc_flags(mem, next_avail_);
  if (!flags) return std::unexpected(std::move(flags.error()));
  return packed_is_avail(*flags, avail_wrap_);
}

// ---------------------------------------------------------------------------------------------
// inflight tracking (inflight.hpp)

void PackedQueue::record_pop(uint16_t id, uint32_t slots) {
  // Free entries suffice: the slots held, this buffer's included, are at most size_ (checked by
  // pop()), and every held slot has exactly one entry.
  uint16_t first = 0;
  uint16_t prev = 0;
  for (uint32_t k = 0; k < slots; ++k) {
    const uint16_t e = inf_free_.back();
    inf_free_.pop_back();
    InflightDescPacked& x = inf_desc_[e];
    std::atomic_ref<uint8_t>(x.inflight).store(0, std::memory_order_relaxed);
    x.addr = pop_descs_[k].addr;
    x.len = pop_descs_[k].len;
    x.id = pop_descs_[k].id;
    x.flags = pop_descs_[k].flags;
    x.next = 0;
    if (k == 0) {
      first = e;
    } else {
      inf_desc_[prev].next = e;
      inf_next_[prev] = e;
    }
    prev = e;
  }
  InflightDescPacked& h = inf_desc_[first];
  h.num = static_cast<uint16_t>(slots);
  h.last = prev;
  h.counter = inf_counter_++;
  h.id = id;  // the head entry keeps the buffer id (the ring has it in the list's last one)
  // The copies before the mark: a mark is only ever on a whole record.
  std::atomic_ref<uint8_t>(h.inflight).store(1, std::memory_order_release);
  inf_head_[id] = first;
}

Result<std::optional<DescriptorChain>> PackedQueue::pop_resubmit(const GuestMemory& mem) {
  const Recovered r = resubmit_.back();
  resubmit_.pop_back();
  segs_.start();
  uint16_t e = r.entry;
  for (uint16_t k = 0; k < r.num; ++k) {
    InflightDescPacked x;
    std::memcpy(&x, &inf_desc_[e], sizeof x);  // the front-end may write the area meanwhile
    const PvirtqDesc d{x.addr, x.len, x.id, x.flags};
    if (x.flags & VIRTQ_DESC_F_INDIRECT) {
      if (!indirect_ || r.num != 1 || (x.flags & VIRTQ_DESC_F_NEXT)) {
        return fault(QueueFault::IndirectInChain, "inflight area: indirect descriptor of buffer " +
                                                      std::to_string(r.id) + " in a list of " +
                                                      std::to_string(r.num));
      }
      if (auto st = walk_indirect(mem, d); !st) return std::unexpected(st.error());
    } else if (auto st = append(mem, d, (x.flags & VIRTQ_DESC_F_WRITE) != 0); !st) {
      return std::unexpected(st.error());
    }
    e = inf_next_[e];
  }
  return std::optional<DescriptorChain>(DescriptorChain{
      r.id, r.num, segs_.segments(), segs_.readable_len(), segs_.writable_len()});
}

Status PackedQueue::attach_inflight(const GuestMemory& mem, std::span<uint8_t> area) {
  if (auto st = check_usable(); !st) return st;
  const auto qsize = static_cast<uint16_t>(size_);
  if (area.size() < inflight_packed_queue_bytes(qsize)) {
    return fail("inflight area of " + std::to_string(area.size()) +
                    " bytes is too small for a packed ring of " + std::to_string(size_),
                EINVAL);
  }
  if (inflight_slots_ != 0) return fail("inflight area attached to a queue holding buffers", EBUSY);
  if (auto st = publish_used(mem); !st) return st;  // the area starts after what was returned
  auto* hdr = reinterpret_cast<InflightPackedHeader*>(area.data());
  auto* desc = reinterpret_cast<InflightDescPacked*>(area.data() + sizeof(InflightPackedHeader));
  detach_inflight();
  inf_next_.assign(qsize, 0);
  inf_head_.assign(max_size_, 0);
  pop_descs_.resize(qsize);
  inf_free_.reserve(qsize);
  std::vector<bool> owned(qsize, false);

  if (hdr->version == 0) {  // fresh: nothing in flight, start where the queue is
    std::fill(area.begin() + sizeof(InflightPackedHeader), area.end(), uint8_t{0});
    hdr->desc_num = qsize;
    hdr->free_head = hdr->old_free_head = 0;
    hdr->used_idx = hdr->old_used_idx = next_used_;
    hdr->used_wrap_counter = hdr->old_used_wrap_counter = used_wrap_ ? 1 : 0;
    hdr->version = kInflightVersion;
    inf_counter_ = 0;
  } else {
    if (hdr->version != kInflightVersion || hdr->desc_num != qsize) {
      return fail("inflight area: version " + std::to_string(hdr->version) + " for " +
                      std::to_string(hdr->desc_num) + " descriptors, the packed ring has " +
                      std::to_string(size_),
                  EINVAL);
    }
    struct Held {
      uint64_t counter;
      Recovered r;
    };
    std::vector<Held> held;
    std::vector<bool> id_seen(qsize, false);
    std::optional<size_t> completing;  // index into held
    uint32_t slots = 0;
    uint64_t top = 0;
    for (uint16_t i = 0; i < qsize; ++i) {
      const uint8_t mark = desc[i].inflight;
      if (mark == 0) continue;
      const uint16_t num = desc[i].num;
      const uint16_t id = desc[i].id;
      const std::string what = "inflight area: entry " + std::to_string(i);
      if (mark != 1 && mark != kInflightPackedCompleting)
        return fail(what + " has mark " + std::to_string(mark), EINVAL);
      if (num == 0 || num > qsize || id >= qsize || id_seen[id])
        return fail(what + ": buffer id " + std::to_string(id) + " with " + std::to_string(num) +
                        " slot(s) (out of range or held twice)",
                    EINVAL);
      id_seen[id] = true;
      uint16_t e = i;
      for (uint16_t k = 0; k < num; ++k) {
        if (e >= qsize || owned[e])
          return fail(what + ": its list reaches entry " + std::to_string(e) +
                          " (out of range or another buffer's)",
                      EINVAL);
        owned[e] = true;
        const uint16_t next = desc[e].next;
        if (k + 1 < num) inf_next_[e] = next;
        e = next;
      }
      if (mark == kInflightPackedCompleting) {
        if (completing) return fail("inflight area: two buffers being completed", EINVAL);
        completing = held.size();
      }
      held.push_back(Held{desc[i].counter, Recovered{i, id, num}});
      slots += num;
      top = std::max(top, desc[i].counter);
    }
    // Where the next used descriptor goes.
    uint32_t used = hdr->used_idx;
    bool wrap = hdr->used_wrap_counter != 0;
    if (completing) {
      // Its used descriptor went to old_used_idx. Still the driver's available descriptor of
      // that lap there: not published, so it is still in flight.
      const Recovered c = held[*completing].r;
      used = hdr->old_used_idx;
      wrap = hdr->old_used_wrap_counter != 0;
      if (used >= qsize)
        return fail("inflight area: old_used_idx " + std::to_string(used) + " outside the ring",
                    EINVAL);
      auto flags = load_desc_flags(mem, used);
      if (!flags) return std::unexpected(std::move(flags.error()));
      if (packed_is_avail(*flags, wrap)) {
        desc[c.entry].inflight = 1;
      } else {
        desc[c.entry].inflight = 0;
        uint16_t e = c.entry;
        for (uint16_t k = 0; k < c.num; ++k) {
          owned[e] = false;
          e = inf_next_[e];
        }
        slots -= c.num;
        held.erase(held.begin() + static_cast<ptrdiff_t>(*completing));
        used += c.num;
        if (used >= qsize) {
          used -= qsize;
          wrap = !wrap;
        }
      }
    }
    if (used >= qsize)
      return fail("inflight area: used_idx " + std::to_string(used) + " outside the ring", EINVAL);
    if (slots > qsize)
      return fail("inflight area: " + std::to_string(slots) + " slots in flight, ring of " +
                      std::to_string(qsize),
                  EINVAL);
    next_used_ = static_cast<uint16_t>(used);
    used_wrap_ = wrap;
    uint32_t avail = used + slots;
    bool avail_wrap = wrap;
    if (avail >= qsize) {
      avail -= qsize;
      avail_wrap = !avail_wrap;
    }
    next_avail_ = static_cast<uint16_t>(avail);
    avail_wrap_ = avail_wrap;
    used_since_signal_ = 0;
    hdr->used_idx = hdr->old_used_idx = next_used_;
    hdr->used_wrap_counter = hdr->old_used_wrap_counter = used_wrap_ ? 1 : 0;
    std::sort(held.begin(), held.end(),
              [](const Held& a, const Held& b) { return a.counter > b.counter; });
    for (const Held& h : held) {
      resubmit_.push_back(h.r);
      inflight_[h.r.id] = h.r.num;
      inf_head_[h.r.id] = h.r.entry;
    }
    inflight_slots_ = slots;
    inf_counter_ = top + 1;
  }
  for (uint16_t e = qsize; e-- > 0;) {
    if (!owned[e]) inf_free_.push_back(e);
  }
  inf_hdr_ = hdr;
  inf_desc_ = desc;
  return {};
}

}  // namespace iovirt::virtio
