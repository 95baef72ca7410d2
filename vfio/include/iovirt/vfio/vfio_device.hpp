// DeviceTransport over a real VFIO device fd (from Container::open_device): the kernel's vfio-pci
// regions are read/written at their fd offsets with pread/pwrite, mmap-able BAR areas are mapped
// MAP_SHARED, interrupts are eventfds handed to VFIO_DEVICE_SET_IRQS.
//
// Region and IRQ infos are fetched once per index and cached (they do not change while the fd is
// open); every bound the kernel returns is validated by the pure parsers in vfio_uapi.hpp.
// Not thread-safe: the passthrough device calls it from the vCPU/device thread that owns it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/fd.hpp"
#include "iovirt/vfio/transport.hpp"

namespace iovirt::vfio {

// The system calls VfioDeviceTransport makes on the device fd: the real ones in production, a
// scripted fake kernel in unit tests (so the argsz two-pass, the SET_IRQS layout and the range
// checks are tested here, without /dev/vfio). Failures return -1 / MAP_FAILED with errno set.
class DeviceFdOps {
 public:
  virtual ~DeviceFdOps() = default;
  virtual int ioctl(unsigned long request, void* arg) = 0;
  virtual ssize_t pread(void* buf, size_t len, off_t offset) = 0;
  virtual ssize_t pwrite(const void* buf, size_t len, off_t offset) = 0;
  // mmap(nullptr, len, prot, MAP_SHARED, fd, offset).
  virtual void* mmap(size_t len, int prot, off_t offset) = 0;
  [[nodiscard]] virtual int fd() const = 0;
};

class VfioDeviceTransport final : public DeviceTransport {
 public:
  // `name` is the PCI address for logs; `device` a VFIO device fd (Container::open_device).
  VfioDeviceTransport(std::string name, Fd device);
  // For tests: the fd operations come from `ops`.
  VfioDeviceTransport(std::string name, std::unique_ptr<DeviceFdOps> ops);

  [[nodiscard]] std::string_view name() const override { return name_; }
  Result<DeviceInfo> device_info() override;
  Result<RegionInfo> region_info(uint32_t index) override;
  Result<IrqInfo> irq_info(uint32_t index) override;
  Status region_read(uint32_t index, uint64_t offset, std::span<uint8_t> data) override;
  Status region_write(uint32_t index, uint64_t offset, std::span<const uint8_t> data) override;
  Result<RegionMapping> map_region(uint32_t index, uint64_t offset, uint64_t size) override;
  Status set_irq_eventfds(uint32_t index, uint32_t start, std::span<const int> fds) override;
  Status disable_irq(uint32_t index) override;
  Status set_irq_unmask_eventfd(uint32_t index, int fd) override;
  Status reset() override;

  // The device fd (-1 with fake ops).
  [[nodiscard]] int fd() const { return ops_->fd(); }

 private:
  Status set_irqs(uint32_t index, uint32_t flags, uint32_t start, std::span<const int> fds,
                  const char* what);
  // The [offset, offset + len) range checks shared by read and write.
  Result<uint64_t> io_offset(uint32_t index, uint64_t offset, uint64_t len, bool write);

  std::string name_;
  std::unique_ptr<DeviceFdOps> ops_;
  std::optional<DeviceInfo> info_;
  std::vector<std::optional<RegionInfo>> regions_;
  std::vector<std::optional<IrqInfo>> irqs_;
};

}  // namespace iovirt::vfio
