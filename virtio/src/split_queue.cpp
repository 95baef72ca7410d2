#include "iovirt/virtio/split_queue.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#include "iovirt/core/hex.hpp"
#include "buffer_prefetch.hpp"

namespace iovirt::virtio {

namespace {

// BufferOutsideMemory's detail: "[addr, +len) at descriptor N" (N: the buffer's place in its
// chain). Appended piecewise: g++ 12 at -O3 flags the chained operator+ with a false -Wrestrict.
std::string outside_detail(uint64_t addr, uint64_t len, uint32_t index) {
  std::string detail = "[";
  detail += hex(addr);
  detail += ", +";
  detail += hex(len);
  detail += ") at descriptor ";
  detail += std::to_string(index);
  return detail;
}

bool valid_size(uint32_t n) {
  return n >= 1 && n <= VIRTQ_MAX_SIZE && (n & (n - 1)) == 0;
}

// The idx fields are shared with a running guest: access them as 16-bit atomics (alignment 2 is
// checked by validate(), and GuestMemory::span checks the bounds).
Result<uint16_t> load_u16(const GuestMemory& mem, uint64_t gpa) {
  auto s = mem.span(gpa, 2);
  if (!s) return std::unexpected(std::move(s.error()));
  auto* p = reinterpret_cast<uint16_t*>(s->data());
  return std::atomic_ref<uint16_t>(*p).load(std::memory_order_relaxed);
}

Status store_u16(const GuestMemory& mem, uint64_t gpa, uint16_t v) {
  auto s = mem.span(gpa, 2);
  if (!s) return std::unexpected(std::move(s.error()));
  auto* p = reinterpret_cast<uint16_t*>(s->data());
  std::atomic_ref<uint16_t>(*p).store(v, std::memory_order_relaxed);
  return {};
}

}  // namespace

const char* to_string(QueueFault f) {
  switch (f) {
    case QueueFault::None:
      return "no fault";
    case QueueFault::Broken:
      return "queue is broken (needs reset)";
    case QueueFault::NotReady:
      return "queue is not ready";
    case QueueFault::InvalidSize:
      return "invalid queue size";
    case QueueFault::RingOutsideMemory:
      return "ring area outside guest memory";
    case QueueFault::RingMisaligned:
      return "ring area misaligned";
    case QueueFault::AvailIdxJump:
      return "avail index jumped past the queue size";
    case QueueFault::HeadOutOfRange:
      return "head descriptor index out of range";
    case QueueFault::NextOutOfRange:
      return "next descriptor index out of range";
    case QueueFault::ChainLoop:
      return "descriptor chain loops";
    case QueueFault::LengthOverflow:
      return "descriptor chain length overflows";
    case QueueFault::ReadAfterWrite:
      return "device-readable descriptor after a device-writable one";
    case QueueFault::BufferOutsideMemory:
      return "buffer outside guest memory";
    case QueueFault::IndirectNotNegotiated:
      return "indirect descriptor without VIRTIO_F_INDIRECT_DESC";
    case QueueFault::IndirectWithNext:
      return "indirect descriptor with NEXT";
    case QueueFault::IndirectBadLength:
      return "indirect table length invalid";
    case QueueFault::IndirectTooLarge:
      return "indirect table too large";
    case QueueFault::IndirectOutsideMemory:
      return "indirect table outside guest memory";
    case QueueFault::NestedIndirect:
      return "indirect descriptor inside an indirect table";
    case QueueFault::IndirectNextOutOfRange:
      return "next index outside the indirect table";
    case QueueFault::IndirectChainLoop:
      return "indirect descriptor chain loops";
    case QueueFault::UsedHeadOutOfRange:
      return "used element head out of range";
    case QueueFault::RingAccess:
      return "ring access failed";
    case QueueFault::DescNotAvailable:
      return "descriptor in a chain not available";
    case QueueFault::ChainTooLong:
      return "descriptor chain longer than the queue";
    case QueueFault::IndirectInChain:
      return "indirect descriptor inside a chain";
    case QueueFault::BufferIdOutOfRange:
      return "buffer id out of range";
    case QueueFault::BufferIdInUse:
      return "buffer id already in use";
    case QueueFault::RingOverrun:
      return "more descriptors in flight than the queue size";
    case QueueFault::UsedIdNotInFlight:
      return "used buffer id not in flight";
  }
  return "unknown fault";
}

SplitQueue::SplitQueue(uint32_t max_size) : max_size_(max_size), size_(max_size) {
  // Worst case of one chain: size direct descriptors, the last of which is an indirect table.
  segs_.resize(static_cast<size_t>(max_size) + kMaxIndirectEntries);
}

Result<SplitQueue> SplitQueue::create(uint16_t max_size) {
  if (!valid_size(max_size)) {
    return fail(std::string("virtq: ") + to_string(QueueFault::InvalidSize) + " " +
                std::to_string(max_size) + " (must be a power of 2 in [1, 32768])");
  }
  return SplitQueue(max_size);
}

Status SplitQueue::set_size(uint32_t size) {
  if (!valid_size(size) || size > max_size_) {
    return fault(QueueFault::InvalidSize,
                 std::to_string(size) + " (power of 2, at most " + std::to_string(max_size_) + ")");
  }
  size_ = size;
  return {};
}

void SplitQueue::reset() {
  size_ = max_size_;
  desc_gpa_ = avail_gpa_ = used_gpa_ = 0;
  ready_ = event_idx_ = indirect_ = false;
  next_avail_ = next_used_ = avail_seen_ = published_used_ = 0;
  inflight_hdr_ = nullptr;
  inflight_desc_ = nullptr;
  inflight_batch_.clear();
  resubmit_.clear();
  signalled_used_ = 0;
  signalled_valid_ = false;
  fault_ = QueueFault::None;
}

std::unexpected<Error> SplitQueue::fault(QueueFault f, const std::string& detail) {
  if (fault_ == QueueFault::None) fault_ = f;
  return fail(std::string("virtq: ") + to_string(f) + " (" + detail + ")");
}

Status SplitQueue::validate(const GuestMemory& mem) {
  if (!valid_size(size_)) return fault(QueueFault::InvalidSize, std::to_string(size_));
  struct Area {
    const char* name;
    uint64_t gpa;
    uint64_t bytes;
    uint64_t align;
  };
  const Area areas[] = {
      {"descriptor table", desc_gpa_, desc_area_bytes(size_), VIRTQ_DESC_ALIGN},
      {"avail ring", avail_gpa_, avail_area_bytes(size_), VIRTQ_AVAIL_ALIGN},
      {"used ring", used_gpa_, used_area_bytes(size_), VIRTQ_USED_ALIGN},
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

Result<uint16_t> SplitQueue::load_avail_idx(const GuestMemory& mem) {
  auto idx = load_u16(mem, avail_gpa_ + avail_idx_offset());
  if (!idx) return fault(QueueFault::RingAccess, "read avail idx: " + idx.error().message());
  // Section 2.7.13.4: the driver writes the ring entry before idx (with a write barrier); pair
  // it so the ring entries and descriptors read below are at least as new as idx.
  std::atomic_thread_fence(std::memory_order_acquire);
  return *idx;
}

Result<std::optional<DescriptorChain>> SplitQueue::pop(const GuestMemory& mem) {
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));

  if (!resubmit_.empty()) {  // a predecessor's requests first (attach_inflight)
    const uint16_t head = resubmit_.back();
    resubmit_.pop_back();
    segs_.start();
    if (auto st = walk_chain(mem, head); !st) return std::unexpected(std::move(st.error()));
    return std::optional<DescriptorChain>(
        DescriptorChain{head, 1, segs_.segments(), segs_.readable_len(), segs_.writable_len()});
  }
  if (avail_seen_ == next_avail_) {
    auto pending = refresh_avail(mem);
    if (!pending) return std::unexpected(std::move(pending.error()));
    if (*pending == 0) return std::optional<DescriptorChain>{};
  }

  const uint32_t slot = next_avail_ & (size_ - 1);
  auto head = mem.read_obj<uint16_t>(avail_gpa_ + avail_ring_offset(slot));
  if (!head) return fault(QueueFault::RingAccess, "read avail ring: " + head.error().message());
  if (*head >= size_) return head_fault(*head, slot);

  segs_.start();
  if (auto st = walk_chain(mem, *head); !st) return std::unexpected(std::move(st.error()));
  mark_inflight(*head);
  ++next_avail_;
  return std::optional<DescriptorChain>(
      DescriptorChain{*head, 1, segs_.segments(), segs_.readable_len(), segs_.writable_len()});
}

Result<uint16_t> SplitQueue::refresh_avail(const GuestMemory& mem) {
  auto avail_idx = load_avail_idx(mem);
  if (!avail_idx) return std::unexpected(std::move(avail_idx.error()));
  const auto pending = static_cast<uint16_t>(*avail_idx - next_avail_);
  // Section 2.7.6: idx only grows by the number of heads the driver added; more than size
  // entries at once cannot be real (Firecracker: "avail ring idx too far ahead").
  if (pending > size_) {
    return fault(QueueFault::AvailIdxJump, "avail idx " + std::to_string(*avail_idx) + " is " +
                                               std::to_string(pending) + " past next_avail " +
                                               std::to_string(next_avail_) + ", queue size " +
                                               std::to_string(size_));
  }
  avail_seen_ = *avail_idx;
  return pending;
}

std::unexpected<Error> SplitQueue::head_fault(uint16_t head, uint32_t slot) {
  return fault(QueueFault::HeadOutOfRange, "head " + std::to_string(head) + " in avail slot " +
                                               std::to_string(slot) + ", queue size " +
                                               std::to_string(size_));
}

void SplitQueue::mark_inflight(uint16_t head) {
  if (inflight_hdr_ == nullptr) return;
  // Marked before the device acts on it.
  inflight_desc_[head].counter = inflight_counter_++;
  std::atomic_thread_fence(std::memory_order_release);
  inflight_desc_[head].inflight = 1;
}

Result<DirectPop> SplitQueue::pop_direct(const GuestMemory& mem, std::span<DirectChain> out,
                                         uint32_t prefetch_from, uint32_t prefetch_len) {
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));
  DirectPop r;
  if (!resubmit_.empty()) {  // pop() returns those first
    r.blocked = true;
    return r;
  }
  auto pending = static_cast<uint16_t>(avail_seen_ - next_avail_);
  if (pending < out.size()) {  // the index shares a line the driver keeps writing: read it only
    auto p = refresh_avail(mem);  // when the entries seen so far do not fill the burst
    if (!p) return std::unexpected(std::move(p.error()));
    pending = *p;
  }
  const uint32_t n = std::min<uint32_t>(pending, static_cast<uint32_t>(out.size()));
  if (n == 0) return r;
  // validate() put both areas inside guest memory; a failure here means the map changed.
  auto ring = mem.span(avail_gpa_ + avail_ring_offset(0), 2ull * size_);
  if (!ring) return fault(QueueFault::RingAccess, "read avail ring: " + ring.error().message());
  auto table = mem.span(desc_gpa_, 16ull * size_);
  if (!table) return fault(QueueFault::RingAccess, "read descriptor: " + table.error().message());
  const uint32_t mask = size_ - 1;
  // Pass 1: the heads, each checked, and their descriptors prefetched.
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t slot = (next_avail_ + i) & mask;
    uint16_t head;
    std::memcpy(&head, ring->data() + 2ull * slot, sizeof head);
    if (head >= size_) {
      // The chains before it are not taken: the queue is broken, nothing is returned.
      return head_fault(head, slot);
    }
    out[i].head = head;
    __builtin_prefetch(table->data() + 16ull * head);
  }
  // Pass 2: each descriptor read once (a copy: the driver may rewrite it) and checked as
  // walk_chain() and ChainSegments::append() check a one-descriptor chain.
  for (uint32_t i = 0; i < n; ++i) {
    VirtqDesc d;
    std::memcpy(&d, table->data() + 16ull * out[i].head, sizeof d);
    if ((d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) != 0) {
      r.blocked = true;
      break;
    }
    auto buf = mem.span(d.addr, d.len);
    if (!buf) return fault(QueueFault::BufferOutsideMemory, outside_detail(d.addr, d.len, 0));
    const bool write = (d.flags & VIRTQ_DESC_F_WRITE) != 0;
    out[i].seg = Segment{d.addr, d.len, write};
    out[i].host = buf->data();
    if (prefetch_from != kNoPrefetch)
      prefetch_buffer(buf->data(), d.len, prefetch_from, prefetch_len, write);
    mark_inflight(out[i].head);
    ++next_avail_;
    ++r.count;
  }
  return r;
}

// Section 2.7.5: follow NEXT through the table; at most size descriptors (2.7.5.2: a chain is
// never longer than the queue size), so a loop ends as ChainLoop.
Status SplitQueue::walk_chain(const GuestMemory& mem, uint16_t head) {
  uint16_t idx = head;
  for (uint32_t n = 0; n < size_; ++n) {
    auto d = mem.read_obj<VirtqDesc>(desc_gpa_ + 16ull * idx);
    if (!d) return fault(QueueFault::RingAccess, "read descriptor: " + d.error().message());
    if (d->flags & VIRTQ_DESC_F_INDIRECT) {
      // Section 2.7.5.3.1: only with the feature, and never together with NEXT.
      if (!indirect_) {
        return fault(QueueFault::IndirectNotNegotiated, "descriptor " + std::to_string(idx));
      }
      if (d->flags & VIRTQ_DESC_F_NEXT) {
        return fault(QueueFault::IndirectWithNext, "descriptor " + std::to_string(idx));
      }
      return walk_indirect(mem, *d);
    }
    if (auto st = append(mem, *d); !st) return st;
    if (!(d->flags & VIRTQ_DESC_F_NEXT)) return {};
    if (d->next >= size_) {
      return fault(QueueFault::NextOutOfRange, "descriptor " + std::to_string(idx) + " next " +
                                                   std::to_string(d->next) + ", queue size " +
                                                   std::to_string(size_));
    }
    idx = d->next;
  }
  return fault(QueueFault::ChainLoop, "longer than queue size " + std::to_string(size_) +
                                          ", head " + std::to_string(head));
}

// Section 2.7.5.3: the table is an array of descriptors chained by NEXT from entry 0.
Status SplitQueue::walk_indirect(const GuestMemory& mem, const VirtqDesc& table) {
  if (table.len == 0 || table.len % sizeof(VirtqDesc) != 0) {
    return fault(QueueFault::IndirectBadLength,
                 "len " + std::to_string(table.len) + " is not a nonzero multiple of 16");
  }
  const uint32_t entries = table.len / sizeof(VirtqDesc);
  if (entries > kMaxIndirectEntries) {
    return fault(QueueFault::IndirectTooLarge, std::to_string(entries) + " entries, at most " +
                                                   std::to_string(kMaxIndirectEntries));
  }
  if (!mem.span(table.addr, table.len)) {
    return fault(QueueFault::IndirectOutsideMemory,
                 "[" + hex(table.addr) + ", +" + hex(table.len) + ")");
  }
  uint32_t idx = 0;
  for (uint32_t n = 0; n < entries; ++n) {
    auto d = mem.read_obj<VirtqDesc>(table.addr + 16ull * idx);
    if (!d)
      return fault(QueueFault::RingAccess, "read indirect descriptor: " + d.error().message());
    if (d->flags & VIRTQ_DESC_F_INDIRECT) {
      return fault(QueueFault::NestedIndirect, "entry " + std::to_string(idx));
    }
    if (auto st = append(mem, *d); !st) return st;
    if (!(d->flags & VIRTQ_DESC_F_NEXT)) return {};
    if (d->next >= entries) {
      return fault(QueueFault::IndirectNextOutOfRange, "entry " + std::to_string(idx) + " next " +
                                                           std::to_string(d->next) + ", table of " +
                                                           std::to_string(entries));
    }
    idx = d->next;
  }
  return fault(QueueFault::IndirectChainLoop,
               "longer than the table of " + std::to_string(entries));
}

std::optional<ChainSegments::Violation> ChainSegments::append(const GuestMemory& mem, uint64_t addr,
                                                              uint32_t len, bool write,
                                                              QueueFault full) {
  if (!write && seen_write_)
    return Violation{QueueFault::ReadAfterWrite, "descriptor " + std::to_string(count_)};
  total_ += len;
  if (total_ > std::numeric_limits<uint32_t>::max()) {
    return Violation{QueueFault::LengthOverflow,
                     "total exceeds 2^32-1 at descriptor " + std::to_string(count_)};
  }
  if (!mem.span(addr, len)) {
    return Violation{QueueFault::BufferOutsideMemory, outside_detail(addr, len, count_)};
  }
  if (count_ >= segs_.size()) return Violation{full, "segment buffer full"};
  if (write) {
    seen_write_ = true;
  } else {
    readable_ += len;
  }
  segs_[count_] = Segment{addr, len, write};
  ++count_;
  return std::nullopt;
}

Status SplitQueue::append(const GuestMemory& mem, const VirtqDesc& d) {
  // Both walks are bounded so a chain has fewer than size + kMaxIndirectEntries segments; the
  // buffer bound is checked anyway.
  auto v =
      segs_.append(mem, d.addr, d.len, (d.flags & VIRTQ_DESC_F_WRITE) != 0, QueueFault::ChainLoop);
  if (v) return fault(v->fault, v->detail);
  return {};
}

Status SplitQueue::push(const GuestMemory& mem, uint16_t head, uint32_t written) {
  if (auto st = push_deferred(mem, head, written); !st) return st;
  return publish_used(mem);
}

Status SplitQueue::publish_used(const GuestMemory& mem) {
  if (published_used_ == next_used_) return {};
  // Section 2.7.8.2: the elements must be visible before the idx that publishes them.
  std::atomic_thread_fence(std::memory_order_release);
  if (auto st = store_u16(mem, used_gpa_ + used_idx_offset(), next_used_); !st) {
    return fault(QueueFault::RingAccess, "write used idx: " + st.error().message());
  }
  published_used_ = next_used_;
  if (inflight_hdr_ != nullptr) {
    // The spec's order: used idx published, then the batch's marks cleared, then used_idx: a
    // crash in between is finished by the next attach_inflight() from last_batch_head.
    std::atomic_thread_fence(std::memory_order_release);
    for (uint16_t h : inflight_batch_) inflight_desc_[h].inflight = 0;
    std::atomic_thread_fence(std::memory_order_release);
    inflight_hdr_->used_idx = next_used_;
    inflight_batch_.clear();
  }
  return {};
}

Status SplitQueue::push_deferred_slow(const GuestMemory& mem, uint16_t head, uint32_t written) {
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));
  if (head >= size_) {
    return fault(QueueFault::UsedHeadOutOfRange,
                 "head " + std::to_string(head) + ", queue size " + std::to_string(size_));
  }
  const uint32_t slot = next_used_ & (size_ - 1);
  const VirtqUsedElem elem{head, written};
  if (auto st = mem.write_obj(used_gpa_ + used_ring_offset(slot), elem); !st) {
    return fault(QueueFault::RingAccess, "write used ring: " + st.error().message());
  }
  next_used_ = static_cast<uint16_t>(next_used_ + 1);
  if (inflight_hdr_ != nullptr) {
    inflight_desc_[head].next = inflight_hdr_->last_batch_head;
    inflight_hdr_->last_batch_head = head;
    if (inflight_batch_.size() < size_) inflight_batch_.push_back(head);
  }
  return {};
}

Status SplitQueue::attach_inflight(const GuestMemory& mem, std::span<uint8_t> area) {
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));
  const auto qsize = static_cast<uint16_t>(size_);
  if (area.size() < inflight_split_queue_bytes(qsize)) {
    return fail("inflight area of " + std::to_string(area.size()) + " bytes is too small for a ring of " +
                std::to_string(size_), EINVAL);
  }
  auto* hdr = reinterpret_cast<InflightSplitHeader*>(area.data());
  auto* desc = reinterpret_cast<InflightDescSplit*>(area.data() + sizeof(InflightSplitHeader));
  auto used = load_u16(mem, used_gpa_ + used_idx_offset());
  if (!used) return fault(QueueFault::RingAccess, "read used idx: " + used.error().message());
  resubmit_.clear();
  inflight_batch_.clear();
  inflight_batch_.reserve(size_);
  if (hdr->version == 0) {  // fresh: nothing was in flight
    std::fill(area.begin() + sizeof(InflightSplitHeader), area.end(), uint8_t{0});
    hdr->desc_num = qsize;
    hdr->last_batch_head = 0;
    hdr->used_idx = *used;
    hdr->version = kInflightVersion;
    inflight_counter_ = 0;
  } else {
    if (hdr->version != kInflightVersion || hdr->desc_num != qsize) {
      return fail("inflight area: version " + std::to_string(hdr->version) + " for " +
                      std::to_string(hdr->desc_num) + " descriptors, the ring has " +
                      std::to_string(size_),
                  EINVAL);
    }
    // A crash between publishing a batch and clearing its marks: clear them now (bounded walk
    // from last_batch_head; a corrupt list stops at the first head out of range).
    const auto unfinished = static_cast<uint16_t>(*used - hdr->used_idx);
    if (unfinished > size_) {
      return fail("inflight area: used_idx " + std::to_string(hdr->used_idx) +
                      " is more than a ring behind the used idx " + std::to_string(*used),
                  EINVAL);
    }
    uint16_t h = hdr->last_batch_head;
    for (uint16_t k = 0; k < unfinished && h < qsize; ++k) {
      desc[h].inflight = 0;
      h = desc[h].next;
    }
    hdr->used_idx = *used;
    // Still marked: in flight when the predecessor stopped. Resubmitted oldest first.
    std::vector<std::pair<uint64_t, uint16_t>> marked;
    uint64_t top = 0;
    for (uint16_t i = 0; i < qsize; ++i) {
      if (desc[i].inflight != 0) marked.emplace_back(desc[i].counter, i);
      top = std::max(top, desc[i].counter);
    }
    std::sort(marked.begin(), marked.end(), std::greater<>());
    for (const auto& m : marked) resubmit_.push_back(m.second);
    inflight_counter_ = top + 1;
  }
  inflight_hdr_ = hdr;
  inflight_desc_ = desc;
  next_used_ = published_used_ = *used;
  next_avail_ = avail_seen_ = static_cast<uint16_t>(*used + resubmit_.size());
  return {};
}

Result<bool> SplitQueue::needs_notification(const GuestMemory& mem) {
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));
  if (auto st = publish_used(mem); !st) return std::unexpected(std::move(st.error()));
  // The used idx store must be visible before reading the driver's suppression state, or the
  // driver may re-enable interrupts in between and never get one (section 2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!event_idx_) {
    auto flags = load_u16(mem, avail_gpa_ + avail_flags_offset());
    if (!flags)
      return fault(QueueFault::RingAccess, "read avail flags: " + flags.error().message());
    return (*flags & VIRTQ_AVAIL_F_NO_INTERRUPT) == 0;
  }
  auto used_event = load_u16(mem, avail_gpa_ + avail_used_event_offset(size_));
  if (!used_event) {
    return fault(QueueFault::RingAccess, "read used_event: " + used_event.error().message());
  }
  const uint16_t old_idx = signalled_used_;
  const bool first = !signalled_valid_;
  signalled_used_ = next_used_;
  signalled_valid_ = true;
  // Nothing decided yet: notify rather than risk a lost interrupt.
  if (first) return true;
  return vring_need_event(*used_event, next_used_, old_idx);
}

Status SplitQueue::set_avail_event(const GuestMemory& mem, uint16_t v) {
  // Only a validated queue's ring addresses are known to be aligned and inside memory: a broken
  // or not-ready queue must not touch them (found by fuzz_split_queue: a misaligned avail ring).
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));
  if (auto st = store_u16(mem, used_gpa_ + used_avail_event_offset(size_), v); !st) {
    return fault(QueueFault::RingAccess, "write avail_event: " + st.error().message());
  }
  return {};
}

Status SplitQueue::disable_notification(const GuestMemory& mem) {
  // Only a validated queue's ring addresses are known to be aligned and inside memory: a broken
  // or not-ready queue must not touch them (found by fuzz_split_queue: a misaligned avail ring).
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));
  // With EVENT_IDX the device simply stops advancing avail_event (section 2.7.10.2).
  if (event_idx_) return {};
  auto flags = load_u16(mem, used_gpa_ + used_flags_offset());
  if (!flags) return fault(QueueFault::RingAccess, "read used flags: " + flags.error().message());
  if (auto st = store_u16(mem, used_gpa_ + used_flags_offset(),
                          static_cast<uint16_t>(*flags | VIRTQ_USED_F_NO_NOTIFY));
      !st) {
    return fault(QueueFault::RingAccess, "write used flags: " + st.error().message());
  }
  return {};
}

Result<bool> SplitQueue::enable_notification(const GuestMemory& mem) {
  // Only a validated queue's ring addresses are known to be aligned and inside memory: a broken
  // or not-ready queue must not touch them (found by fuzz_split_queue: a misaligned avail ring).
  if (broken()) return fail(std::string("virtq: ") + to_string(QueueFault::Broken));
  if (!ready_) return fail(std::string("virtq: ") + to_string(QueueFault::NotReady));
  if (event_idx_) {
    if (auto st = set_avail_event(mem, next_avail_); !st)
      return std::unexpected(std::move(st.error()));
  } else {
    auto flags = load_u16(mem, used_gpa_ + used_flags_offset());
    if (!flags) return fault(QueueFault::RingAccess, "read used flags: " + flags.error().message());
    if (auto st = store_u16(mem, used_gpa_ + used_flags_offset(),
                            static_cast<uint16_t>(*flags & ~VIRTQ_USED_F_NO_NOTIFY));
        !st) {
      return fault(QueueFault::RingAccess, "write used flags: " + st.error().message());
    }
  }
  // Order the store above before re-reading avail idx: a buffer added before the driver saw
  // the re-enabled notification would otherwise be missed.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  auto idx = load_avail_idx(mem);
  if (!idx) return std::unexpected(std::move(idx.error()));
  return *idx != next_avail_;
}

}  // namespace iovirt::virtio
