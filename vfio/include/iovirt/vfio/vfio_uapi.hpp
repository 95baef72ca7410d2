// The VFIO uAPI structs iovirt uses (linux/vfio.h, Linux 6.1 headers), with their C layouts pinned
// by static_assert, and the pure parsers that turn what the kernel returns into transport.hpp's
// types.
//
// Flexible arrays: unlike kvm.h (see core/kvm_uapi.hpp), 6.1's vfio.h declares its trailing arrays
// as plain C99 `T x[]`, which g++ lays out exactly as C does (vfio_irq_set::data at 20, sizeof 20),
// and every VFIO ioctl number is _IO() (no size encoded), so the kernel's structs are usable as
// they are. The asserts below fail the build if a future header changes that. Variable-length
// requests (VFIO_DEVICE_SET_IRQS) are still built from IrqSetHeader + an int32 array in a byte
// buffer rather than by indexing past a flexible member.
//
// Everything the kernel returns is treated as untrusted input: argsz may grow, a capability chain
// is a list of offsets inside a buffer, counts are device-controlled. The parsers are bounded (no
// unbounded walk, every offset checked against the buffer) and unit-tested on crafted bytes.
#pragma once

#include <linux/vfio.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "iovirt/core/error.hpp"
#include "iovirt/vfio/transport.hpp"

namespace iovirt::vfio {

static_assert(sizeof(vfio_group_status) == 8);
static_assert(sizeof(vfio_device_info) == 20 && offsetof(vfio_device_info, cap_offset) == 16);
static_assert(sizeof(vfio_region_info) == 32 && offsetof(vfio_region_info, size) == 16 &&
              offsetof(vfio_region_info, offset) == 24);
static_assert(sizeof(vfio_info_cap_header) == 8 && offsetof(vfio_info_cap_header, next) == 4);
static_assert(sizeof(vfio_region_info_cap_sparse_mmap) == 16 &&
              offsetof(vfio_region_info_cap_sparse_mmap, areas) == 16);
static_assert(sizeof(vfio_region_sparse_mmap_area) == 16);
static_assert(sizeof(vfio_irq_info) == 16 && offsetof(vfio_irq_info, count) == 12);
static_assert(sizeof(vfio_irq_set) == 20 && offsetof(vfio_irq_set, data) == 20);
static_assert(sizeof(vfio_iommu_type1_dma_map) == 32 && offsetof(vfio_iommu_type1_dma_map, size) == 24);
static_assert(sizeof(vfio_iommu_type1_dma_unmap) == 24 &&
              offsetof(vfio_iommu_type1_dma_unmap, data) == 24);

// struct vfio_irq_set without data[]: the int32 eventfd array follows it directly.
struct IrqSetHeader {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t start;
  uint32_t count;
};
static_assert(sizeof(IrqSetHeader) == sizeof(vfio_irq_set));

// Bounds on what iovirt accepts from the kernel (generous: vfio-pci has 9 fixed regions + a few
// device-specific ones and 5 IRQ indexes; MSI-X allows at most 2048 vectors, MSI 32, INTx 1).
inline constexpr uint32_t kMaxRegions = 64;
inline constexpr uint32_t kMaxIrqIndexes = 16;
inline constexpr uint32_t kMaxMsixVectors = 2048;
inline constexpr uint32_t kMaxMsiVectors = 32;
// Region-info capability chains: at most this many bytes, capabilities and sparse areas.
inline constexpr size_t kMaxRegionInfoBytes = 64 * 1024;
inline constexpr unsigned kMaxCapabilities = 16;
inline constexpr uint32_t kMaxSparseAreas = 64;
// mmap granularity the sparse areas must respect (x86-64 host page).
inline constexpr uint64_t kHostPageSize = 4096;

// VFIO_DEVICE_GET_INFO's answer: a vfio-pci device (FLAGS_PCI) with bounded region/IRQ counts
// that include the fixed vfio-pci indexes (config region, MSI-X IRQ).
Result<DeviceInfo> parse_device_info(const vfio_device_info& raw);

// VFIO_DEVICE_GET_REGION_INFO's answer, as the whole argsz buffer the kernel filled (the 32-byte
// struct followed by its capability chain). Checks: argsz fits the buffer when FLAG_CAPS says
// capabilities follow (else the caller must ask again with argsz bytes); the index echoes
// `expected_index`; offset + size does not wrap and the offset is a valid mmap/pread offset;
// every capability header lies inside the buffer at an offset past the previous one, at most
// kMaxCapabilities of them; a sparse-mmap capability's areas fit in the buffer, number at most
// kMaxSparseAreas, are page-aligned, non-empty and lie inside the region. Unknown capabilities
// (REGION_TYPE, MSIX_MAPPABLE, ...) are skipped.
Result<RegionInfo> parse_region_info(std::span<const uint8_t> argsz_buffer, uint32_t expected_index);

// VFIO_DEVICE_GET_IRQ_INFO's answer for `expected_index`: index echoed, count bounded per index
// (INTx <= 1, MSI <= 32, MSI-X <= 2048, others <= 2048).
Result<IrqInfo> parse_irq_info(const vfio_irq_info& raw, uint32_t expected_index);

}  // namespace iovirt::vfio
