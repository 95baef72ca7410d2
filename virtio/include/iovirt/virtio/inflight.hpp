// Inflight I/O tracking for split and packed rings (vhost-user.rst "Inflight I/O tracking",
// protocol feature INFLIGHT_SHMFD): a memory area the front-end keeps (a memfd it got from the
// back-end with GET_INFLIGHT_FD and hands to every later back-end with SET_INFLIGHT_FD) in which
// the back-end marks each head it pops and clears it once the used element is published. A back-end
// that crashed leaves the marks behind; its successor resubmits exactly the requests that were
// in flight, in the order they were popped — which the used index alone cannot say once
// requests complete out of order (io_uring, qemu-storage-daemon).
//
// The split layout is the one the spec gives and libvhost-user / DPDK use, per queue, 64-byte
// aligned:
//   struct { u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx; }
//   struct { u8 inflight; u8 padding[5]; u16 next; u64 counter; } desc[desc_num];
// The area is shared with the front-end, so it is read as hostile input on recovery: heads are
// range-checked, batch walks bounded by the queue size.
#pragma once

#include <cstddef>
#include <cstdint>

namespace iovirt::virtio {

struct InflightSplitHeader {
  uint64_t features;
  uint16_t version;  // 0: never used (a fresh area), 1: this layout
  uint16_t desc_num;
  uint16_t last_batch_head;
  uint16_t used_idx;
};
static_assert(sizeof(InflightSplitHeader) == 16);

struct InflightDescSplit {
  uint8_t inflight;
  uint8_t padding[5];
  uint16_t next;
  uint64_t counter;
};
static_assert(sizeof(InflightDescSplit) == 16);

inline constexpr uint16_t kInflightVersion = 1;

// Bytes of one queue's area (what GET_INFLIGHT_FD's mmap_size is made of, per queue): a header
// and one entry per descriptor, 64-byte aligned.
template <class Header, class Desc>
[[nodiscard]] constexpr size_t inflight_area_bytes(uint16_t queue_size) {
  const size_t raw = sizeof(Header) + size_t{queue_size} * sizeof(Desc);
  return (raw + 63) & ~size_t{63};
}

[[nodiscard]] constexpr size_t inflight_split_queue_bytes(uint16_t queue_size) {
  return inflight_area_bytes<InflightSplitHeader, InflightDescSplit>(queue_size);
}

// Packed rings (the spec's QueueRegionPacked / DescStatePacked structs). A packed ring's slots
// are overwritten by used descriptors of other buffers while a buffer is still in flight, so the
// area keeps a copy of each in-flight buffer's ring descriptors (its list linked by `next`, `num`
// long, from a head entry marked `inflight`) and the position the next used descriptor goes to.
// How iovirt keeps it consistent across a crash at any instruction (PackedQueue):
//   pop:  the entries are written, then the head's `inflight` = 1.
//   push: old_used_idx/old_used_wrap_counter = the slot the used descriptor goes to, the head's
//         `inflight` = 2 (being completed there), the used descriptor is published in the ring,
//         used_idx/used_wrap_counter = the slot after it, `inflight` = 0.
// Recovery: a head marked 2 was completed iff the ring slot at old_used_idx no longer holds the
// driver's available descriptor of that lap (the device writes nothing after it); with no head
// marked 2, used_idx/used_wrap_counter are whole. The next avail position is the used position
// plus the slots still in flight. free_head/old_free_head are not used (the free list is the
// back-end's own, rebuilt from the marks); `inflight` = 2 is iovirt's own value, so an area is
// meant to be read by the next iovirt back-end, not by another implementation.
struct InflightPackedHeader {
  uint64_t features;
  uint16_t version;
  uint16_t desc_num;
  uint16_t free_head;
  uint16_t old_free_head;
  uint16_t used_idx;
  uint16_t old_used_idx;
  uint8_t used_wrap_counter;
  uint8_t old_used_wrap_counter;
  uint8_t padding[10];
};
static_assert(sizeof(InflightPackedHeader) == 32);

struct InflightDescPacked {
  uint8_t inflight;  // on the head entry: 0 free, 1 in flight, 2 being completed
  uint8_t padding;
  uint16_t next;     // the buffer's next entry
  uint16_t last;     // on the head entry: the buffer's last entry
  uint16_t num;      // on the head entry: ring slots (= entries) the buffer took
  uint64_t counter;  // on the head entry: pop order
  uint16_t id;       // the ring descriptor's fields, as the driver wrote them
  uint16_t flags;
  uint32_t len;
  uint64_t addr;
};
static_assert(sizeof(InflightDescPacked) == 32);

inline constexpr uint8_t kInflightPackedCompleting = 2;

[[nodiscard]] constexpr size_t inflight_packed_queue_bytes(uint16_t queue_size) {
  return inflight_area_bytes<InflightPackedHeader, InflightDescPacked>(queue_size);
}

[[nodiscard]] constexpr size_t inflight_queue_bytes(uint16_t queue_size, bool packed) {
  return packed ? inflight_packed_queue_bytes(queue_size) : inflight_split_queue_bytes(queue_size);
}

}  // namespace iovirt::virtio
