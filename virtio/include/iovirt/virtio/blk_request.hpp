// virtio-blk wire format (virtio 1.2 section 5.2) and the request parser: a pure function from
// one descriptor chain to "what to do", with no I/O and no allocation, so the backend, the unit
// tests and the fuzz target all drive the same code.
//
// Threat model: the chain comes from a hostile guest. The split queue already checked that every
// segment lies inside one guest memory region and that readable segments precede writable ones;
// the parser checks everything virtio-blk adds: the 16-byte header, the status byte (the last
// device-writable byte), the data direction for the request type, sector ranges against the
// capacity without overflow, 512-byte granularity, segment counts against the advertised limits,
// and the discard/write-zeroes segment array (section 5.2.6). Section 2.6.4: no assumption is
// made about how the driver splits the header, data and status across descriptors.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/split_queue.hpp"

namespace iovirt::virtio::blk {

// Feature bits (section 5.2.3).
inline constexpr unsigned VIRTIO_BLK_F_SIZE_MAX = 1;
inline constexpr unsigned VIRTIO_BLK_F_SEG_MAX = 2;
inline constexpr unsigned VIRTIO_BLK_F_GEOMETRY = 4;
inline constexpr unsigned VIRTIO_BLK_F_RO = 5;
inline constexpr unsigned VIRTIO_BLK_F_BLK_SIZE = 6;
inline constexpr unsigned VIRTIO_BLK_F_FLUSH = 9;
inline constexpr unsigned VIRTIO_BLK_F_TOPOLOGY = 10;
inline constexpr unsigned VIRTIO_BLK_F_CONFIG_WCE = 11;
inline constexpr unsigned VIRTIO_BLK_F_MQ = 12;
inline constexpr unsigned VIRTIO_BLK_F_DISCARD = 13;
inline constexpr unsigned VIRTIO_BLK_F_WRITE_ZEROES = 14;

// Request types (section 5.2.6).
inline constexpr uint32_t VIRTIO_BLK_T_IN = 0;
inline constexpr uint32_t VIRTIO_BLK_T_OUT = 1;
inline constexpr uint32_t VIRTIO_BLK_T_FLUSH = 4;
inline constexpr uint32_t VIRTIO_BLK_T_GET_ID = 8;
inline constexpr uint32_t VIRTIO_BLK_T_GET_LIFETIME = 10;
inline constexpr uint32_t VIRTIO_BLK_T_DISCARD = 11;
inline constexpr uint32_t VIRTIO_BLK_T_WRITE_ZEROES = 13;
inline constexpr uint32_t VIRTIO_BLK_T_SECURE_ERASE = 14;

// Status byte values (section 5.2.6).
inline constexpr uint8_t VIRTIO_BLK_S_OK = 0;
inline constexpr uint8_t VIRTIO_BLK_S_IOERR = 1;
inline constexpr uint8_t VIRTIO_BLK_S_UNSUPP = 2;

// The GET_ID string length (section 5.2.6: "20 bytes").
inline constexpr uint32_t VIRTIO_BLK_ID_BYTES = 20;
inline constexpr uint64_t kSectorSize = 512;
inline constexpr unsigned kSectorShift = 9;

// struct virtio_blk_req header (section 5.2.6): type, reserved, sector.
struct BlkReqHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(BlkReqHeader) == 16);

// struct virtio_blk_discard_write_zeroes (section 5.2.6).
struct BlkDiscardWriteZeroes {
  uint64_t sector;
  uint32_t num_sectors;
  uint32_t flags;  // bit 0: unmap; the other bits are reserved
};
static_assert(sizeof(BlkDiscardWriteZeroes) == 16);
inline constexpr uint32_t VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

// struct virtio_blk_config (section 5.2.4) up to and including unused1: the fields Linux reads.
// Byte offsets are fixed by the spec; every field is naturally aligned except that the 60-byte
// size is not a multiple of 8, hence pack(4) (checked below).
#pragma pack(push, 4)
struct BlkConfigSpace {
  uint64_t capacity;  // in 512-byte sectors
  uint32_t size_max;
  uint32_t seg_max;
  uint16_t geometry_cylinders;
  uint8_t geometry_heads;
  uint8_t geometry_sectors;
  uint32_t blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  uint16_t min_io_size;
  uint32_t opt_io_size;
  uint8_t writeback;
  uint8_t unused0;
  uint16_t num_queues;
  uint32_t max_discard_sectors;
  uint32_t max_discard_seg;
  uint32_t discard_sector_alignment;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
};
#pragma pack(pop)
static_assert(sizeof(BlkConfigSpace) == 60);
static_assert(offsetof(BlkConfigSpace, blk_size) == 20);
static_assert(offsetof(BlkConfigSpace, num_queues) == 34);
static_assert(offsetof(BlkConfigSpace, max_discard_sectors) == 36);
static_assert(offsetof(BlkConfigSpace, write_zeroes_may_unmap) == 56);

// What the device accepts; the parser refuses anything outside it.
struct BlkLimits {
  uint64_t capacity_sectors = 0;
  bool readonly = false;
  bool discard = false;       // VIRTIO_BLK_F_DISCARD negotiated
  bool write_zeroes = false;  // VIRTIO_BLK_F_WRITE_ZEROES negotiated
  uint32_t max_discard_sectors = 0;
  uint32_t max_discard_seg = 0;
  uint32_t max_write_zeroes_sectors = 0;
  uint32_t max_write_zeroes_seg = 0;
};

enum class BlkOp : uint8_t { Read, Write, Flush, GetId, Discard, WriteZeroes, Other };
inline constexpr unsigned kBlkOpCount = 7;
[[nodiscard]] const char* to_string(BlkOp op);

// One byte range of a discard or write-zeroes request, already checked against the capacity.
struct BlkRange {
  uint64_t offset;  // bytes
  uint64_t len;     // bytes, > 0
  bool unmap;       // write zeroes: the device may deallocate (PUNCH_HOLE instead of ZERO_RANGE)
};

// Caller-owned storage the parser fills; sized once per queue slot.
struct BlkRequestStorage {
  std::span<iovec> iov;        // data segments; more than fit -> IOERR (seg_max exceeded)
  std::span<BlkRange> ranges;  // discard / write-zeroes segments (max_*_seg entries)
};

struct BlkRequest {
  BlkOp op = BlkOp::Other;
  // nullptr: the chain has no device-writable byte, so it cannot even be completed with an error;
  // the driver is broken and the device should fail (section 2.1.2, DEVICE_NEEDS_RESET).
  uint8_t* status_ptr = nullptr;
  // VIRTIO_BLK_S_OK: execute the request. IOERR / UNSUPP: complete it at once with this status.
  uint8_t status = VIRTIO_BLK_S_IOERR;
  uint64_t offset = 0;       // byte offset in the disk (Read/Write)
  uint64_t data_len = 0;     // bytes covered by iov
  uint32_t iov_count = 0;    // entries used in storage.iov (Read/Write/GetId)
  uint32_t range_count = 0;  // entries used in storage.ranges (Discard/WriteZeroes)
  const char* reason = "";   // why the request was refused (static string, for logs and tests)
};

// Parses one chain. Never fails: every problem is reported in the returned request.
[[nodiscard]] BlkRequest parse_request(const GuestMemory& mem, std::span<const Segment> segments,
                                       const BlkLimits& limits, const BlkRequestStorage& storage);

}  // namespace iovirt::virtio::blk
