// Packed virtqueue wire format (virtio 1.2 section 2.8, VIRTIO_F_RING_PACKED). Little-endian like
// the split ring (ring.hpp). One ring of descriptors is shared by both sides: the driver marks a
// descriptor available, the device overwrites it with a used descriptor; two 4-byte event
// suppression structures replace the split ring's flags and event indices.
#pragma once

#include <cstddef>
#include <cstdint>

#include "iovirt/virtio/ring.hpp"

namespace iovirt::virtio {

// Descriptor flags (sections 2.8.3, 2.8.6, 2.8.7, 2.8.1): NEXT, WRITE and INDIRECT keep their
// split ring values (ring.hpp); AVAIL and USED carry the ring wrap counters.
inline constexpr uint16_t VIRTQ_DESC_F_AVAIL = 1u << 7;
inline constexpr uint16_t VIRTQ_DESC_F_USED = 1u << 15;

// Event suppression flags (section 2.8.10).
inline constexpr uint16_t RING_EVENT_FLAGS_ENABLE = 0x0;
inline constexpr uint16_t RING_EVENT_FLAGS_DISABLE = 0x1;
inline constexpr uint16_t RING_EVENT_FLAGS_DESC = 0x2;  // only with VIRTIO_F_EVENT_IDX
inline constexpr uint16_t RING_EVENT_FLAGS_MASK = 0x3;

// off_wrap: bits 0-14 ring offset, bit 15 wrap counter (section 2.8.14). vhost's
// GET/SET_VRING_BASE packs the packed ring's index and wrap counter the same way.
inline constexpr uint16_t PACKED_WRAP_BIT = 1u << 15;
inline constexpr uint16_t PACKED_OFFSET_MASK = PACKED_WRAP_BIT - 1;

// Maximum queue size of a packed ring (section 2.8: "up to 2^15 entries"); any size in
// [1, 32768] is valid, it need not be a power of 2.
inline constexpr uint32_t PVIRTQ_MAX_SIZE = 32768;

// Alignment of each ring part (section 2.8.10.1).
inline constexpr uint64_t PVIRTQ_DESC_ALIGN = 16;
inline constexpr uint64_t PVIRTQ_EVENT_ALIGN = 4;

// struct pvirtq_desc (section 2.8.13).
struct PvirtqDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t id;
  uint16_t flags;
};
static_assert(sizeof(PvirtqDesc) == 16);
static_assert(offsetof(PvirtqDesc, len) == 8);
static_assert(offsetof(PvirtqDesc, id) == 12);
static_assert(offsetof(PvirtqDesc, flags) == 14);

// struct pvirtq_event_suppress (section 2.8.14).
struct PvirtqEventSuppress {
  uint16_t off_wrap;
  uint16_t flags;
};
static_assert(sizeof(PvirtqEventSuppress) == 4);
static_assert(offsetof(PvirtqEventSuppress, flags) == 2);

inline constexpr uint64_t pdesc_offset(uint32_t slot) {
  return 16ull * slot;
}
inline constexpr uint64_t pdesc_id_offset(uint32_t slot) {
  return 16ull * slot + 12;
}
inline constexpr uint64_t pdesc_flags_offset(uint32_t slot) {
  return 16ull * slot + 14;
}
inline constexpr uint64_t pdesc_area_bytes(uint32_t size) {
  return 16ull * size;
}
inline constexpr uint64_t event_off_wrap_offset() {
  return 0;
}
inline constexpr uint64_t event_flags_offset() {
  return 2;
}
inline constexpr uint64_t event_area_bytes() {
  return 4;
}

// The AVAIL/USED bits a side writes when its wrap counter is `wrap` (section 2.8.1): available
// descriptors have AVAIL == wrap and USED != wrap, used ones have both equal to wrap.
inline constexpr uint16_t packed_avail_bits(bool wrap) {
  return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
}
inline constexpr uint16_t packed_used_bits(bool wrap) {
  return wrap ? static_cast<uint16_t>(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) : uint16_t{0};
}
inline constexpr bool packed_is_avail(uint16_t flags, bool wrap) {
  return (flags & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) == packed_avail_bits(wrap);
}
inline constexpr bool packed_is_used(uint16_t flags, bool wrap) {
  return (flags & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) == packed_used_bits(wrap);
}

}  // namespace iovirt::virtio
