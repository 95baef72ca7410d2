#include "iovirt/virtio/testing/driver_queue.hpp"

#include <algorithm>
#include <atomic>
#include <string>

namespace iovirt::virtio::testing {

DriverQueue::DriverQueue(const GuestMemory& mem, DriverQueueLayout layout)
    : mem_(&mem), layout_(layout), num_free_(layout.size), chain_len_(layout.size, 0) {}

Result<DriverQueue> DriverQueue::create(const GuestMemory& mem, DriverQueueLayout layout) {
  const uint32_t n = layout.size;
  if (n == 0 || (n & (n - 1)) != 0 || n > VIRTQ_MAX_SIZE) {
    return fail("driver queue: size " + std::to_string(n) + " is not a power of 2 <= 32768");
  }
  // The descriptor table (16 * n) is the largest of the three areas.
  const std::vector<uint8_t> zeros(std::max(desc_area_bytes(n), used_area_bytes(n)), 0);
  const std::span<const uint8_t> z(zeros);
  if (auto st = mem.write(layout.desc_gpa, z.first(desc_area_bytes(n))); !st)
    return std::unexpected(st.error());
  if (auto st = mem.write(layout.avail_gpa, z.first(avail_area_bytes(n))); !st)
    return std::unexpected(st.error());
  if (auto st = mem.write(layout.used_gpa, z.first(used_area_bytes(n))); !st)
    return std::unexpected(st.error());
  return DriverQueue(mem, layout);
}

Result<uint16_t> DriverQueue::alloc_descs(std::span<const Buf> bufs) {
  if (bufs.empty() || bufs.size() > num_free_) {
    return fail("driver queue: no room for a chain of " + std::to_string(bufs.size()));
  }
  const uint16_t mask = static_cast<uint16_t>(layout_.size - 1);
  const uint16_t head = next_free_;
  for (size_t i = 0; i < bufs.size(); ++i) {
    const auto idx = static_cast<uint16_t>((head + i) & mask);
    const bool last = i + 1 == bufs.size();
    VirtqDesc d{bufs[i].gpa, bufs[i].len,
                static_cast<uint16_t>((bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) |
                                      (last ? 0 : VIRTQ_DESC_F_NEXT)),
                static_cast<uint16_t>((idx + 1) & mask)};
    if (last) d.next = 0;
    if (auto st = write_desc(idx, d); !st) return std::unexpected(st.error());
  }
  next_free_ = static_cast<uint16_t>((head + bufs.size()) & mask);
  num_free_ -= static_cast<uint32_t>(bufs.size());
  chain_len_[head] = static_cast<uint16_t>(bufs.size());
  return head;
}

Result<uint16_t> DriverQueue::add_chain(std::span<const Buf> bufs) {
  auto head = alloc_descs(bufs);
  if (!head) return head;
  if (auto st = publish_head(*head); !st) return std::unexpected(st.error());
  return head;
}

Result<uint16_t> DriverQueue::add_indirect_chain(std::span<const Buf> bufs, uint64_t table_gpa) {
  if (bufs.empty()) return fail("driver queue: empty indirect chain");
  std::vector<VirtqDesc> table(bufs.size());
  for (size_t i = 0; i < bufs.size(); ++i) {
    const bool last = i + 1 == bufs.size();
    table[i] = VirtqDesc{bufs[i].gpa, bufs[i].len,
                         static_cast<uint16_t>((bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) |
                                               (last ? 0 : VIRTQ_DESC_F_NEXT)),
                         static_cast<uint16_t>(last ? 0 : i + 1)};
  }
  if (auto st = write_table(table_gpa, table); !st) return std::unexpected(st.error());
  const Buf one{table_gpa, static_cast<uint32_t>(bufs.size() * sizeof(VirtqDesc)), false};
  auto head = alloc_descs(std::span<const Buf>(&one, 1));
  if (!head) return head;
  if (auto st = write_desc(*head, VirtqDesc{table_gpa, one.len, VIRTQ_DESC_F_INDIRECT, 0}); !st) {
    return std::unexpected(st.error());
  }
  if (auto st = publish_head(*head); !st) return std::unexpected(st.error());
  return head;
}

Status DriverQueue::publish_head(uint16_t head) {
  const uint16_t at = held_ ? shadow_idx_ : avail_idx_;
  if (auto st = set_avail_ring_entry(static_cast<uint16_t>(at & (layout_.size - 1)), head); !st) {
    return st;
  }
  if (held_) {  // published by release_avail()
    ++shadow_idx_;
    return {};
  }
  // Section 2.7.13.3: the ring entry before idx.
  std::atomic_thread_fence(std::memory_order_release);
  return set_avail_idx(static_cast<uint16_t>(avail_idx_ + 1));
}

Result<std::optional<VirtqUsedElem>> DriverQueue::take_used() {
  auto idx = used_idx();
  if (!idx) return std::unexpected(idx.error());
  if (*idx == last_used_) return std::optional<VirtqUsedElem>{};
  std::atomic_thread_fence(std::memory_order_acquire);
  const uint32_t slot = last_used_ & (layout_.size - 1u);
  auto elem = mem_->read_obj<VirtqUsedElem>(layout_.used_gpa + used_ring_offset(slot));
  if (!elem) return std::unexpected(elem.error());
  ++last_used_;
  if (elem->id < layout_.size) {
    num_free_ += chain_len_[elem->id];
    chain_len_[elem->id] = 0;
  }
  return std::optional<VirtqUsedElem>(*elem);
}

Status DriverQueue::write_desc(uint16_t index, const VirtqDesc& d) {
  return mem_->write_obj(layout_.desc_gpa + 16ull * index, d);
}

Status DriverQueue::write_table(uint64_t gpa, std::span<const VirtqDesc> table) {
  for (size_t i = 0; i < table.size(); ++i) {
    if (auto st = mem_->write_obj(gpa + 16ull * i, table[i]); !st) return st;
  }
  return {};
}

Status DriverQueue::set_avail_ring_entry(uint16_t slot, uint16_t head) {
  return mem_->write_obj(layout_.avail_gpa + avail_ring_offset(slot), head);
}

Status DriverQueue::release_avail() {
  if (!held_) return {};
  held_ = false;
  std::atomic_thread_fence(std::memory_order_release);  // the entries before idx (2.7.13.3)
  return set_avail_idx(shadow_idx_);
}

Status DriverQueue::set_avail_idx(uint16_t idx) {
  if (auto st = mem_->write_obj(layout_.avail_gpa + avail_idx_offset(), idx); !st) return st;
  avail_idx_ = idx;
  return {};
}

Status DriverQueue::set_avail_flags(uint16_t flags) {
  return mem_->write_obj(layout_.avail_gpa + avail_flags_offset(), flags);
}

Status DriverQueue::set_used_event(uint16_t v) {
  return mem_->write_obj(layout_.avail_gpa + avail_used_event_offset(layout_.size), v);
}

Result<uint16_t> DriverQueue::used_idx() const {
  return mem_->read_obj<uint16_t>(layout_.used_gpa + used_idx_offset());
}

Result<uint16_t> DriverQueue::used_flags() const {
  return mem_->read_obj<uint16_t>(layout_.used_gpa + used_flags_offset());
}

Result<uint16_t> DriverQueue::avail_event() const {
  return mem_->read_obj<uint16_t>(layout_.used_gpa + used_avail_event_offset(layout_.size));
}

}  // namespace iovirt::virtio::testing
