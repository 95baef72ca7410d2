// Device side of a split virtqueue (virtio 1.2 section 2.7) as plain state: sizes, ring
// addresses, next avail/used indices and negotiated features. Every operation takes the guest
// memory as an argument, so the same queue serves in-process devices, vhost-user backends and
// tests.
//
// Threat model: every ring byte is written by a hostile guest. Each rule the guest can break is a
// QueueFault; the first fault marks the queue broken (the device then sets DEVICE_NEEDS_RESET,
// section 2.1.2) and every later pop/push fails until reset(). Loops are bounded by the queue
// size or the indirect table size. pop() does not allocate: segments land in a buffer sized once
// by create().
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/inflight.hpp"
#include "iovirt/virtio/ring.hpp"

namespace iovirt::virtio {

// The rule that was broken; the Error message starts with the same words.
enum class QueueFault : uint8_t {
  None,
  Broken,                  // an earlier fault; the device needs a reset
  NotReady,                // pop/push before the queue was enabled (a device bug: not recorded)
  InvalidSize,             // size not a power of 2 in [1, 32768] or above the device maximum
  RingOutsideMemory,       // desc/avail/used area not inside one guest memory region
  RingMisaligned,          // desc 16, avail 2, used 4 (section 2.7)
  AvailIdxJump,            // avail idx moved more than size past next_avail
  HeadOutOfRange,          // avail ring entry >= size
  NextOutOfRange,          // desc.next >= size
  ChainLoop,               // chain longer than the queue size
  LengthOverflow,          // total chain length above 2^32 - 1
  ReadAfterWrite,          // device-readable descriptor after a device-writable one (2.7.4.2)
  BufferOutsideMemory,     // [addr, addr + len) not inside guest memory
  IndirectNotNegotiated,   // INDIRECT without VIRTIO_F_INDIRECT_DESC
  IndirectWithNext,        // INDIRECT together with NEXT (2.7.5.3.1)
  IndirectBadLength,       // table len zero or not a multiple of 16
  IndirectTooLarge,        // more entries than kMaxIndirectEntries
  IndirectOutsideMemory,   // table not inside guest memory
  NestedIndirect,          // INDIRECT inside an indirect table (2.7.5.3.1)
  IndirectNextOutOfRange,  // next inside an indirect table beyond the table
  IndirectChainLoop,       // chain inside an indirect table longer than the table
  UsedHeadOutOfRange,      // push() of a head >= size (device bug)
  RingAccess,              // a ring read/write failed after validate (memory map changed)
  // Packed ring only (section 2.8).
  DescNotAvailable,        // a later descriptor of a chain is not marked available (2.8.6)
  ChainTooLong,            // NEXT chain longer than the queue size (2.8.18)
  IndirectInChain,         // INDIRECT descriptor inside a NEXT chain (2.8.19)
  BufferIdOutOfRange,      // buffer id >= queue size
  BufferIdInUse,           // buffer id of a buffer the device still holds
  RingOverrun,             // more descriptors in flight than the queue size
  UsedIdNotInFlight,       // push() of an id/desc_count that pop() did not return (device bug)
};

[[nodiscard]] const char* to_string(QueueFault f);

// One buffer of a chain, in chain order: device-readable segments first, then writable ones.
struct Segment {
  uint64_t addr;
  uint32_t len;
  bool write;  // device-writable (VIRTQ_DESC_F_WRITE)
};

// A chain taken from the avail ring. `segments` points into the queue's buffer and stays valid
// until the next pop() or reset() on the same queue; copy it to keep it longer.
struct DescriptorChain {
  uint16_t head;                      // give this back to push() (packed ring: the buffer id)
  uint16_t desc_count;                // packed ring: ring slots the chain took (push() needs it,
                                      // an indirect table is 1); split ring: always 1
  std::span<const Segment> segments;  // never empty
  uint32_t readable_len;              // sum of device-readable segment lengths
  uint32_t writable_len;              // sum of device-writable segment lengths
};

// A chain of exactly one direct descriptor (neither NEXT nor INDIRECT): the shape virtio-net
// drivers give small frames and receive buffers in. pop_direct() returns these by value.
struct DirectChain {
  uint16_t head;
  Segment seg;
  uint8_t* host;  // seg.addr in this process (valid while the memory map is)
};

// What pop_direct() did: `count` chains popped; `blocked` when it stopped before a chain of
// another shape (pop() takes that one), as opposed to an empty ring or a full `out`.
struct DirectPop {
  uint32_t count = 0;
  bool blocked = false;
};

// The buffers of one chain as the device walks it, shared by both ring formats (the packed
// queue uses it too): the rules every buffer keeps are the same in both rings, only the way the
// walk finds the next descriptor differs. Sized once for the worst-case chain and never
// reallocated, so pop() does not allocate. A broken rule comes back as a Violation, which the
// queue records as its fault.
class ChainSegments final {
 public:
  struct Violation {
    QueueFault fault;
    std::string detail;
  };

  void resize(size_t capacity) { segs_.resize(capacity); }
  // Starts a new chain.
  void start() {
    count_ = 0;
    total_ = 0;
    readable_ = 0;
    seen_write_ = false;
  }
  // Adds one buffer: device-readable buffers come before device-writable ones (sections 2.7.4.2,
  // 2.8.4), the chain's total length stays below 2^32, and [addr, addr + len) lies inside guest
  // memory. `full` is the fault for a full buffer, a bound the walks already keep.
  std::optional<Violation> append(const GuestMemory& mem, uint64_t addr, uint32_t len, bool write,
                                  QueueFault full);

  [[nodiscard]] std::span<const Segment> segments() const {
    return std::span<const Segment>(segs_.data(), count_);
  }
  [[nodiscard]] uint32_t readable_len() const { return static_cast<uint32_t>(readable_); }
  [[nodiscard]] uint32_t writable_len() const { return static_cast<uint32_t>(total_ - readable_); }

 private:
  std::vector<Segment> segs_;
  uint32_t count_ = 0;
  uint64_t total_ = 0;
  uint64_t readable_ = 0;
  bool seen_write_ = false;
};

class SplitQueue final {
 public:
  // Indirect tables larger than this are refused (Linux uses at most a few hundred entries).
  static constexpr uint32_t kMaxIndirectEntries = 1024;

  // max_size: the device's maximum queue size (power of 2, <= 32768); size() starts there.
  // Allocates the segment buffer once (max_size + kMaxIndirectEntries entries).
  [[nodiscard]] static Result<SplitQueue> create(uint16_t max_size);

  // --- configuration (control path; the transport writes these) ---
  [[nodiscard]] uint32_t max_size() const { return max_size_; }
  [[nodiscard]] uint32_t size() const { return size_; }
  // The driver may pick a smaller power of 2 (section 4.1.4.3 queue_size).
  Status set_size(uint32_t size);
  void set_desc_table(uint64_t gpa) { desc_gpa_ = gpa; }
  void set_avail_ring(uint64_t gpa) { avail_gpa_ = gpa; }
  void set_used_ring(uint64_t gpa) { used_gpa_ = gpa; }
  void set_event_idx(bool on) { event_idx_ = on; }
  void set_indirect(bool on) { indirect_ = on; }
  void set_ready(bool on) { ready_ = on; }
  [[nodiscard]] uint64_t desc_table() const { return desc_gpa_; }
  [[nodiscard]] uint64_t avail_ring() const { return avail_gpa_; }
  [[nodiscard]] uint64_t used_ring() const { return used_gpa_; }
  [[nodiscard]] bool event_idx() const { return event_idx_; }
  [[nodiscard]] bool indirect() const { return indirect_; }
  [[nodiscard]] bool ready() const { return ready_; }

  // Back to the state after create(): not ready, indices 0, features off, not broken.
  void reset();

  // --- state ---
  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }
  [[nodiscard]] uint16_t next_used() const { return next_used_; }
  // Restore indices (migration, vhost-user GET/SET_VRING_BASE).
  void set_next_avail(uint16_t v) { next_avail_ = avail_seen_ = v; }
  void set_next_used(uint16_t v) { next_used_ = published_used_ = v; }
  [[nodiscard]] bool broken() const { return fault_ != QueueFault::None; }
  [[nodiscard]] QueueFault fault() const { return fault_; }

  // --- data path ---
  // Size is a power of 2 and each ring area lies inside guest memory, aligned (section 2.7).
  Status validate(const GuestMemory& mem);
  // Next available chain, or nullopt when the ring is empty (section 2.7.13 device side).
  Result<std::optional<DescriptorChain>> pop(const GuestMemory& mem);
  // A burst of pop(): up to out.size() chains that are one direct descriptor each, read the way
  // DPDK's vhost reads a burst — the avail entries in one pass, every descriptor prefetched
  // before the first is looked at — so the cache misses on the driver's fresh descriptors
  // overlap. Same checks and faults as pop(); a chain of any other shape stops the burst (left
  // for pop(), `blocked`), and so do heads recovered by attach_inflight(). With `prefetch_from`,
  // every line of bytes [prefetch_from, prefetch_from + prefetch_len) of each buffer (as far as
  // it reaches) is prefetched as soon as its descriptor is read: for reading when the buffer is
  // device-readable (a frame about to be copied out), for writing when it is device-writable
  // (a frame about to be copied in: the lines are asked for exclusive at once, instead of each
  // store waiting in the store buffer for the line to leave the driver's CPU).
  static constexpr uint32_t kNoPrefetch = UINT32_MAX;
  Result<DirectPop> pop_direct(const GuestMemory& mem, std::span<DirectChain> out,
                               uint32_t prefetch_from = kNoPrefetch, uint32_t prefetch_len = 128);
  // Return a chain: used element, then used idx with release ordering (section 2.7.8).
  Status push(const GuestMemory& mem, uint16_t head, uint32_t written);
  // The used element only; publish_used() (or the next push() or needs_notification()) makes
  // it and every deferred one visible with one used idx store — a burst costs the driver one
  // cache line transfer of the index instead of one per chain.
  Status push_deferred(const GuestMemory& mem, uint16_t head, uint32_t written) {
    // Inline for the common case (a burst pushes per chain): a healthy queue without inflight
    // tracking and a used ring in the first memory region. Everything else, errors included,
    // takes the checked path.
    if (fault_ == QueueFault::None && ready_ && head < size_ && inflight_hdr_ == nullptr) {
      const uint64_t gpa = used_gpa_ + used_ring_offset(next_used_ & (size_ - 1));
      if (auto s = mem.span(gpa, sizeof(VirtqUsedElem))) {
        const VirtqUsedElem elem{head, written};
        std::memcpy(s->data(), &elem, sizeof elem);
        next_used_ = static_cast<uint16_t>(next_used_ + 1);
        return {};
      }
    }
    return push_deferred_slow(mem, head, written);
  }
  Status publish_used(const GuestMemory& mem);
  // Whether to interrupt the driver now for the used entries pushed since the last decision
  // (section 2.7.10): used_event with EVENT_IDX, else the avail ring's NO_INTERRUPT flag.
  Result<bool> needs_notification(const GuestMemory& mem);

  // Driver-to-device notification suppression (section 2.7.10). enable_notification() asks for
  // kicks again (avail_event = next_avail with EVENT_IDX, else clears NO_NOTIFY) and returns
  // whether buffers arrived meanwhile, so the device re-polls instead of missing them.
  Result<bool> enable_notification(const GuestMemory& mem);
  Status disable_notification(const GuestMemory& mem);
  Status set_avail_event(const GuestMemory& mem, uint16_t v);

  // Inflight tracking (inflight.hpp) in `area` (inflight_split_queue_bytes(size()) bytes at
  // least), after the ring is set up and validated. A fresh area is initialised; an area a
  // previous back-end left behind is recovered: its last batch's marks are finished, and pop()
  // then first returns the heads still marked, oldest first, and continues the avail ring after
  // them (next_avail = used idx + their count; next_used = used idx). An area that does not fit
  // this ring is an error and the queue goes on untracked.
  Status attach_inflight(const GuestMemory& mem, std::span<uint8_t> area);
  [[nodiscard]] bool inflight_attached() const { return inflight_hdr_ != nullptr; }
  // Heads recovered from the area still to be returned by pop().
  [[nodiscard]] size_t resubmit_pending() const { return resubmit_.size(); }

 private:
  explicit SplitQueue(uint32_t max_size);

  std::unexpected<Error> fault(QueueFault f, const std::string& detail);
  Status push_deferred_slow(const GuestMemory& mem, uint16_t head, uint32_t written);
  Result<uint16_t> load_avail_idx(const GuestMemory& mem);
  // Reads avail idx into avail_seen_ (AvailIdxJump checked); the chains pending after it.
  Result<uint16_t> refresh_avail(const GuestMemory& mem);
  std::unexpected<Error> head_fault(uint16_t head, uint32_t slot);
  void mark_inflight(uint16_t head);
  Status walk_chain(const GuestMemory& mem, uint16_t head);
  Status walk_indirect(const GuestMemory& mem, const VirtqDesc& table);
  Status append(const GuestMemory& mem, const VirtqDesc& d);

  uint32_t max_size_;
  uint32_t size_;
  uint64_t desc_gpa_ = 0;
  uint64_t avail_gpa_ = 0;
  uint64_t used_gpa_ = 0;
  bool ready_ = false;
  bool event_idx_ = false;
  bool indirect_ = false;
  uint16_t next_avail_ = 0;
  // The driver's avail idx as last read: entries below it are popped without reading the index
  // again (it shares a cache line the driver keeps writing).
  uint16_t avail_seen_ = 0;
  uint16_t next_used_ = 0;
  uint16_t published_used_ = 0;  // the used idx the driver can see
  // Inflight tracking: the shared area (null: off), the next pop's counter, the heads pushed
  // since the last publication (a batch), and recovered heads to resubmit (oldest last).
  InflightSplitHeader* inflight_hdr_ = nullptr;
  InflightDescSplit* inflight_desc_ = nullptr;
  uint64_t inflight_counter_ = 0;
  std::vector<uint16_t> inflight_batch_;
  std::vector<uint16_t> resubmit_;
  // used idx at the last needs_notification() decision (EVENT_IDX old_idx).
  uint16_t signalled_used_ = 0;
  bool signalled_valid_ = false;
  QueueFault fault_ = QueueFault::None;

  // Per-pop scratch: filled by walk_chain.
  ChainSegments segs_;
};

}  // namespace iovirt::virtio
