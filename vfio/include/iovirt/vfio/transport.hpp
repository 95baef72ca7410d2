// The seam under a passthrough PCI device: how iovirt talks to "the real function on the other
// side". VfioDeviceTransport (vfio_device.hpp) speaks the kernel's VFIO device fd; a vfio-user
// client (a device served by another process over a socket) can implement the same interface later
// without touching PassthroughDevice. RecordingTransport (tests) records every call.
//
// The vocabulary is VFIO's (linux/vfio.h, "VFIO PCI" region and IRQ indexes): region
// VFIO_PCI_BAR0..5_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX; IRQ index
// VFIO_PCI_INTX/MSI/MSIX_IRQ_INDEX. Everything a transport returns about the device (sizes,
// counts, config bytes) comes from the device or its host driver and is validated by the caller
// before it shapes what the guest sees.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt::vfio {

struct DeviceInfo {
  uint32_t flags = 0;  // VFIO_DEVICE_FLAGS_*
  uint32_t num_regions = 0;
  uint32_t num_irqs = 0;
  bool resettable() const;  // VFIO_DEVICE_FLAGS_RESET
};

// One mmap-able window inside a region (VFIO_REGION_INFO_CAP_SPARSE_MMAP), region-relative.
struct MmapArea {
  uint64_t offset = 0;
  uint64_t size = 0;
};

struct RegionInfo {
  uint32_t index = 0;
  uint32_t flags = 0;   // VFIO_REGION_INFO_FLAG_READ/WRITE/MMAP
  uint64_t size = 0;    // 0: the region does not exist (e.g. an unimplemented BAR)
  uint64_t offset = 0;  // where the region starts in the device fd (pread/pwrite/mmap offset)
  // The mmap-able parts. When the MMAP flag is set and the region has no sparse-mmap capability,
  // this is one area covering the whole region; when the flag is clear it is empty.
  std::vector<MmapArea> mmap_areas;
  bool readable() const;
  bool writable() const;
  bool mappable() const;
};

struct IrqInfo {
  uint32_t index = 0;
  uint32_t flags = 0;  // VFIO_IRQ_INFO_*
  uint32_t count = 0;  // vectors available at this index (0: the device has none)
};

// A shared mapping of part of a region (a BAR's memory), unmapped on destruction.
class RegionMapping {
 public:
  RegionMapping() = default;
  RegionMapping(void* addr, size_t size) : addr_(addr), size_(size) {}
  RegionMapping(RegionMapping&& o) noexcept;
  RegionMapping& operator=(RegionMapping&& o) noexcept;
  RegionMapping(const RegionMapping&) = delete;
  RegionMapping& operator=(const RegionMapping&) = delete;
  ~RegionMapping();

  void* addr() const { return addr_; }
  size_t size() const { return size_; }
  explicit operator bool() const { return addr_ != nullptr; }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

class DeviceTransport {
 public:
  virtual ~DeviceTransport() = default;

  // For logs and metrics labels: the PCI address ("0000:02:00.0") or socket path.
  virtual std::string_view name() const = 0;

  virtual Result<DeviceInfo> device_info() = 0;
  virtual Result<RegionInfo> region_info(uint32_t index) = 0;
  virtual Result<IrqInfo> irq_info(uint32_t index) = 0;

  // Reads/writes data.size() bytes at `offset` inside region `index` (config space, a BAR that is
  // not mmap-able, an I/O BAR, the ROM). A short transfer is an error.
  virtual Status region_read(uint32_t index, uint64_t offset, std::span<uint8_t> data) = 0;
  virtual Status region_write(uint32_t index, uint64_t offset, std::span<const uint8_t> data) = 0;

  // Maps [offset, offset + size) of region `index` read/write, shared; page-aligned offset and
  // size inside one of the region's mmap areas.
  virtual Result<RegionMapping> map_region(uint32_t index, uint64_t offset, uint64_t size) = 0;

  // VFIO_DEVICE_SET_IRQS, ACTION_TRIGGER with DATA_EVENTFD: vectors [start, start + fds.size()) of
  // IRQ `index` signal those eventfds; an fd of -1 detaches that vector's eventfd. Enabling MSI or
  // MSI-X on the device happens here (the first call with a non-empty range).
  virtual Status set_irq_eventfds(uint32_t index, uint32_t start, std::span<const int> fds) = 0;
  // ACTION_TRIGGER with DATA_NONE and count 0: disables IRQ `index` on the device (MSI/MSI-X off).
  virtual Status disable_irq(uint32_t index) = 0;
  // INTx: ACTION_UNMASK with DATA_EVENTFD — a write to `fd` (KVM's resamplefd, written at the
  // guest's EOI) unmasks the line in the host; -1 detaches.
  virtual Status set_irq_unmask_eventfd(uint32_t index, int fd) = 0;

  // VFIO_DEVICE_RESET (function-level or the host driver's best reset).
  virtual Status reset() = 0;
};

}  // namespace iovirt::vfio
