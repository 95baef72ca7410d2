// Split virtqueue wire format (virtio 1.2 section 2.7). All fields are little-endian (section
// 2.7 with VIRTIO_F_VERSION_1); iovirt builds only for little-endian hosts, so they are used as is.
// The avail and used rings end in arrays sized by the queue, so they are described by a fixed
// header struct plus offset helpers instead of flexible array members.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace iovirt::virtio {

static_assert(std::endian::native == std::endian::little, "virtio rings are little-endian");

// Feature bits (section 6).
inline constexpr unsigned VIRTIO_F_INDIRECT_DESC = 28;
inline constexpr unsigned VIRTIO_F_EVENT_IDX = 29;
inline constexpr unsigned VIRTIO_F_VERSION_1 = 32;
inline constexpr unsigned VIRTIO_F_ACCESS_PLATFORM = 33;
inline constexpr unsigned VIRTIO_F_RING_PACKED = 34;
inline constexpr unsigned VIRTIO_F_IN_ORDER = 35;

inline constexpr uint64_t feature_bit(unsigned bit) { return uint64_t{1} << bit; }
inline constexpr bool has(uint64_t features, unsigned bit) { return (features & feature_bit(bit)) != 0; }

// Descriptor flags (section 2.7.5).
inline constexpr uint16_t VIRTQ_DESC_F_NEXT = 1;
inline constexpr uint16_t VIRTQ_DESC_F_WRITE = 2;
inline constexpr uint16_t VIRTQ_DESC_F_INDIRECT = 4;

// Ring flags (sections 2.7.6 and 2.7.8).
inline constexpr uint16_t VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
inline constexpr uint16_t VIRTQ_USED_F_NO_NOTIFY = 1;

// Maximum queue size of a split ring (section 2.7: "Queue Size ... maximum 32768").
inline constexpr uint32_t VIRTQ_MAX_SIZE = 32768;

// Alignment of each ring part (section 2.7, table "Virtqueue Part / Alignment").
inline constexpr uint64_t VIRTQ_DESC_ALIGN = 16;
inline constexpr uint64_t VIRTQ_AVAIL_ALIGN = 2;
inline constexpr uint64_t VIRTQ_USED_ALIGN = 4;

// struct virtq_desc (section 2.7.5).
struct VirtqDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);
static_assert(offsetof(VirtqDesc, addr) == 0);
static_assert(offsetof(VirtqDesc, len) == 8);
static_assert(offsetof(VirtqDesc, flags) == 12);
static_assert(offsetof(VirtqDesc, next) == 14);

// struct virtq_avail (section 2.7.6): flags, idx, ring[size], used_event.
struct VirtqAvailHeader {
  uint16_t flags;
  uint16_t idx;
};
static_assert(sizeof(VirtqAvailHeader) == 4);

// struct virtq_used_elem (section 2.7.8).
struct VirtqUsedElem {
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(VirtqUsedElem) == 8);
static_assert(offsetof(VirtqUsedElem, len) == 4);

// struct virtq_used (section 2.7.8): flags, idx, ring[size] of virtq_used_elem, avail_event.
struct VirtqUsedHeader {
  uint16_t flags;
  uint16_t idx;
};
static_assert(sizeof(VirtqUsedHeader) == 4);

// Byte offsets inside each ring part, for a queue of `size` entries.
inline constexpr uint64_t avail_flags_offset() {
  return 0;
}
inline constexpr uint64_t avail_idx_offset() {
  return 2;
}
inline constexpr uint64_t avail_ring_offset(uint32_t slot) {
  return 4 + 2ull * slot;
}
inline constexpr uint64_t avail_used_event_offset(uint32_t size) {
  return 4 + 2ull * size;
}
inline constexpr uint64_t avail_area_bytes(uint32_t size) {
  return 6 + 2ull * size;
}
inline constexpr uint64_t used_flags_offset() {
  return 0;
}
inline constexpr uint64_t used_idx_offset() {
  return 2;
}
inline constexpr uint64_t used_ring_offset(uint32_t slot) {
  return 4 + 8ull * slot;
}
inline constexpr uint64_t used_avail_event_offset(uint32_t size) {
  return 4 + 8ull * size;
}
inline constexpr uint64_t used_area_bytes(uint32_t size) {
  return 6 + 8ull * size;
}
inline constexpr uint64_t desc_area_bytes(uint32_t size) {
  return 16ull * size;
}

// Section 2.7.10.1 / Linux vring_need_event: notify iff event_idx lies in [old_idx, new_idx),
// computed in wrapping 16-bit arithmetic.
inline constexpr bool vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace iovirt::virtio
