#include "iovirt/virtio/testing/driver_packed_queue.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <string>

namespace iovirt::virtio::testing {

namespace {

Result<uint16_t*> u16_at(const GuestMemory& mem, uint64_t gpa) {
  auto s = mem.span(gpa, 2);
  if (!s) return std::unexpected(s.error());
  return reinterpret_cast<uint16_t*>(s->data());
}

}  // namespace

DriverPackedQueue::DriverPackedQueue(const GuestMemory& mem, DriverPackedLayout layout)
    : mem_(&mem), layout_(layout), num_free_(layout.size), id_slots_(layout.size, 0) {
  free_ids_.reserve(layout.size);
  // Ids 0, 1, 2... handed out first.
  for (uint32_t i = layout.size; i-- > 0;) free_ids_.push_back(static_cast<uint16_t>(i));
}

Result<DriverPackedQueue> DriverPackedQueue::create(const GuestMemory& mem,
                                                    DriverPackedLayout layout) {
  if (layout.size == 0 || layout.size > PVIRTQ_MAX_SIZE) {
    return fail("driver packed queue: size " + std::to_string(layout.size) +
                " is not in [1, 32768]");
  }
  const std::vector<uint8_t> zeros(pdesc_area_bytes(layout.size), 0);
  if (auto st = mem.write(layout.desc_gpa, zeros); !st) return std::unexpected(st.error());
  const std::span<const uint8_t> z4(zeros.data(), 4);
  if (auto st = mem.write(layout.driver_gpa, z4); !st) return std::unexpected(st.error());
  if (auto st = mem.write(layout.device_gpa, z4); !st) return std::unexpected(st.error());
  return DriverPackedQueue(mem, layout);
}

uint32_t DriverPackedQueue::ids_in_flight() const {
  return layout_.size - static_cast<uint32_t>(free_ids_.size());
}

// Writes descs from next_avail on: all but the head in full, then a release fence, then the
// head's flags (section 2.8.21.1). Returns the head's slot.
Result<uint16_t> DriverPackedQueue::place(std::span<const PvirtqDesc> descs) {
  const uint16_t head = next_avail_;
  uint16_t head_flags = 0;
  for (size_t i = 0; i < descs.size(); ++i) {
    PvirtqDesc d = descs[i];
    d.flags = static_cast<uint16_t>(d.flags | packed_avail_bits(avail_wrap_));
    const uint64_t at = layout_.desc_gpa + pdesc_offset(next_avail_);
    if (i == 0) {
      // Everything but the flags now; the flags publish the whole list below.
      head_flags = d.flags;
      if (auto st = mem_->write_obj(at, d.addr); !st) return std::unexpected(st.error());
      if (auto st = mem_->write_obj(at + offsetof(PvirtqDesc, len), d.len); !st)
        return std::unexpected(st.error());
      if (auto st = mem_->write_obj(at + offsetof(PvirtqDesc, id), d.id); !st)
        return std::unexpected(st.error());
    } else if (auto st = mem_->write_obj(at, d); !st) {
      return std::unexpected(st.error());
    }
    if (++next_avail_ == layout_.size) {
      next_avail_ = 0;
      avail_wrap_ = !avail_wrap_;
    }
  }
  auto p = u16_at(*mem_, layout_.desc_gpa + pdesc_flags_offset(head));
  if (!p) return std::unexpected(p.error());
  std::atomic_ref<uint16_t>(**p).store(head_flags, std::memory_order_release);
  return head;
}

Result<uint16_t> DriverPackedQueue::add_chain(std::span<const Buf> bufs) {
  if (bufs.empty() || bufs.size() > num_free_ || free_ids_.empty()) {
    return fail("driver packed queue: no room for a chain of " + std::to_string(bufs.size()));
  }
  const uint16_t id = free_ids_.back();
  scratch_.clear();
  for (size_t i = 0; i < bufs.size(); ++i) {
    const bool last = i + 1 == bufs.size();
    scratch_.push_back(PvirtqDesc{bufs[i].gpa, bufs[i].len, last ? id : uint16_t{0},
                                  static_cast<uint16_t>((bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) |
                                                        (last ? 0 : VIRTQ_DESC_F_NEXT))});
  }
  if (auto r = place(scratch_); !r) return std::unexpected(r.error());
  free_ids_.pop_back();
  id_slots_[id] = static_cast<uint16_t>(bufs.size());
  num_free_ -= static_cast<uint32_t>(bufs.size());
  return id;
}

Result<uint16_t> DriverPackedQueue::add_indirect_chain(std::span<const Buf> bufs,
                                                       uint64_t table_gpa) {
  if (bufs.empty() || num_free_ == 0 || free_ids_.empty()) {
    return fail("driver packed queue: no room for an indirect chain");
  }
  scratch_.clear();
  for (const Buf& b : bufs) {
    scratch_.push_back(
        PvirtqDesc{b.gpa, b.len, 0, static_cast<uint16_t>(b.write ? VIRTQ_DESC_F_WRITE : 0)});
  }
  if (auto st = write_table(table_gpa, scratch_); !st) return std::unexpected(st.error());
  const uint16_t id = free_ids_.back();
  const PvirtqDesc one{table_gpa, static_cast<uint32_t>(bufs.size() * sizeof(PvirtqDesc)), id,
                       VIRTQ_DESC_F_INDIRECT};
  if (auto r = place(std::span<const PvirtqDesc>(&one, 1)); !r) return std::unexpected(r.error());
  free_ids_.pop_back();
  id_slots_[id] = 1;
  num_free_ -= 1;
  return id;
}

Result<std::optional<PackedUsed>> DriverPackedQueue::take_used() {
  auto p = u16_at(*mem_, layout_.desc_gpa + pdesc_flags_offset(next_used_));
  if (!p) return std::unexpected(p.error());
  const uint16_t flags = std::atomic_ref<uint16_t>(**p).load(std::memory_order_acquire);
  if (!packed_is_used(flags, used_wrap_)) return std::optional<PackedUsed>{};
  auto d = read_desc(next_used_);
  if (!d) return std::unexpected(d.error());
  const PackedUsed u{d->id, d->len, flags};
  if (d->id >= layout_.size || id_slots_[d->id] == 0) {
    return fail("driver packed queue: device used id " + std::to_string(d->id) +
                " that is not in flight");
  }
  const uint32_t slots = id_slots_[d->id];
  uint32_t next = next_used_ + slots;
  if (next >= layout_.size) {
    next -= layout_.size;
    used_wrap_ = !used_wrap_;
  }
  next_used_ = static_cast<uint16_t>(next);
  num_free_ += slots;
  id_slots_[d->id] = 0;
  free_ids_.push_back(d->id);
  return std::optional<PackedUsed>(u);
}

Status DriverPackedQueue::set_driver_event(uint16_t flags, uint16_t off_wrap) {
  if (auto st = mem_->write_obj(layout_.driver_gpa + event_off_wrap_offset(), off_wrap); !st)
    return st;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return mem_->write_obj(layout_.driver_gpa + event_flags_offset(), flags);
}

Result<PvirtqEventSuppress> DriverPackedQueue::device_event() const {
  return mem_->read_obj<PvirtqEventSuppress>(layout_.device_gpa);
}

Result<bool> DriverPackedQueue::needs_kick(uint16_t added) const {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  auto ev = device_event();
  if (!ev) return std::unexpected(ev.error());
  const uint16_t mode = ev->flags & RING_EVENT_FLAGS_MASK;
  if (mode == RING_EVENT_FLAGS_DISABLE) return false;
  if (mode != RING_EVENT_FLAGS_DESC) return true;
  const uint16_t new_pos = next_avail_;
  const auto old_pos = static_cast<uint16_t>(new_pos - added);
  auto event = static_cast<uint16_t>(ev->off_wrap & PACKED_OFFSET_MASK);
  if (((ev->off_wrap & PACKED_WRAP_BIT) != 0) != avail_wrap_) {
    event = static_cast<uint16_t>(event - layout_.size);
  }
  return vring_need_event(event, new_pos, old_pos);
}

Status DriverPackedQueue::write_desc(uint16_t slot, const PvirtqDesc& d) {
  return mem_->write_obj(layout_.desc_gpa + pdesc_offset(slot), d);
}

Result<PvirtqDesc> DriverPackedQueue::read_desc(uint16_t slot) const {
  return mem_->read_obj<PvirtqDesc>(layout_.desc_gpa + pdesc_offset(slot));
}

Status DriverPackedQueue::write_table(uint64_t gpa, std::span<const PvirtqDesc> table) {
  for (size_t i = 0; i < table.size(); ++i) {
    if (auto st = mem_->write_obj(gpa + 16ull * i, table[i]); !st) return st;
  }
  return {};
}

Status DriverPackedQueue::publish_raw(std::span<const PvirtqDesc> descs) {
  if (descs.empty()) return {};
  auto r = place(descs);
  if (!r) return std::unexpected(r.error());
  return {};
}

}  // namespace iovirt::virtio::testing
