// Inflight I/O tracking for a split ring (vhost-user.rst "Inflight I/O tracking", protocol
// feature INFLIGHT_SHMFD): a memory area the front-end keeps (a memfd it got from the back-end
// with GET_INFLIGHT_FD and hands to every later back-end with SET_INFLIGHT_FD) in which the
// back-end marks each head it pops and clears it once the used element is published. A back-end
// that crashed leaves the marks behind; its successor resubmits exactly the requests that were
// in flight, in the order they were popped — which the used index alone cannot say once
// requests complete out of order (io_uring, qemu-storage-daemon).
//
// The layout is the one the spec gives and libvhost-user / DPDK use, per queue, 64-byte aligned:
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

// Bytes of one queue's area (what GET_INFLIGHT_FD's mmap_size is made of, per queue).
[[nodiscard]] constexpr size_t inflight_split_queue_bytes(uint16_t queue_size) {
  const size_t raw = sizeof(InflightSplitHeader) + size_t{queue_size} * sizeof(InflightDescSplit);
  return (raw + 63) & ~size_t{63};
}

}  // namespace iovirt::virtio
