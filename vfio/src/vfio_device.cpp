#include "iovirt/vfio/vfio_device.hpp"

#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <limits>
#include <utility>

#include "iovirt/vfio/vfio_uapi.hpp"

namespace iovirt::vfio {

namespace {

class SysDeviceFdOps final : public DeviceFdOps {
 public:
  explicit SysDeviceFdOps(Fd fd) : fd_(std::move(fd)) {}
  int ioctl(unsigned long request, void* arg) override { return ::ioctl(fd_.get(), request, arg); }
  ssize_t pread(void* buf, size_t len, off_t offset) override {
    return ::pread(fd_.get(), buf, len, offset);
  }
  ssize_t pwrite(const void* buf, size_t len, off_t offset) override {
    return ::pwrite(fd_.get(), buf, len, offset);
  }
  void* mmap(size_t len, int prot, off_t offset) override {
    return ::mmap(nullptr, len, prot, MAP_SHARED, fd_.get(), offset);
  }
  int fd() const override { return fd_.get(); }

 private:
  Fd fd_;
};

}  // namespace

VfioDeviceTransport::VfioDeviceTransport(std::string name, Fd device)
    : name_(std::move(name)), ops_(std::make_unique<SysDeviceFdOps>(std::move(device))) {}

VfioDeviceTransport::VfioDeviceTransport(std::string name, std::unique_ptr<DeviceFdOps> ops)
    : name_(std::move(name)), ops_(std::move(ops)) {}

Result<DeviceInfo> VfioDeviceTransport::device_info() {
  if (info_) return *info_;
  vfio_device_info raw{};
  raw.argsz = sizeof raw;
  if (ops_->ioctl(VFIO_DEVICE_GET_INFO, &raw) != 0) {
    return fail_errno("VFIO_DEVICE_GET_INFO " + name_);
  }
  IOVIRT_TRY_CTX(info, parse_device_info(raw), name_);
  info_ = info;
  regions_.assign(info.num_regions, std::nullopt);
  irqs_.assign(info.num_irqs, std::nullopt);
  return info;
}

Result<RegionInfo> VfioDeviceTransport::region_info(uint32_t index) {
  IOVIRT_TRY_CTX(info, device_info(), "region info");
  if (index >= info.num_regions) {
    return fail(name_ + ": region " + std::to_string(index) + " does not exist (device has " +
                    std::to_string(info.num_regions) + ")",
                EINVAL);
  }
  if (regions_[index]) return *regions_[index];

  // Two passes: the fixed struct first; when capabilities follow, the kernel reports the size it
  // needs in argsz and we ask again with that much (bounded). A second growth is refused.
  std::vector<uint64_t> storage(sizeof(vfio_region_info) / sizeof(uint64_t));
  auto ask = [&](size_t bytes) -> Status {
    storage.assign((bytes + 7) / 8, 0);
    vfio_region_info head{};
    head.argsz = static_cast<uint32_t>(bytes);
    head.index = index;
    std::memcpy(storage.data(), &head, sizeof head);
    if (ops_->ioctl(VFIO_DEVICE_GET_REGION_INFO, storage.data()) != 0) {
      return fail_errno("VFIO_DEVICE_GET_REGION_INFO " + name_ + " region " +
                        std::to_string(index));
    }
    return {};
  };
  IOVIRT_CHECK_CTX(ask(sizeof(vfio_region_info)), "region info");
  size_t bytes = sizeof(vfio_region_info);
  vfio_region_info head{};
  std::memcpy(&head, storage.data(), sizeof head);
  if ((head.flags & VFIO_REGION_INFO_FLAG_CAPS) != 0 && head.argsz > bytes) {
    if (head.argsz > kMaxRegionInfoBytes) {
      return fail(name_ + ": region " + std::to_string(index) + " info wants " +
                      std::to_string(head.argsz) + " bytes (max " +
                      std::to_string(kMaxRegionInfoBytes) + ")",
                  EINVAL);
    }
    bytes = head.argsz;
    IOVIRT_CHECK_CTX(ask(bytes), "region info");
  }
  std::span<const uint8_t> buf(reinterpret_cast<const uint8_t*>(storage.data()), bytes);
  IOVIRT_TRY_CTX(region, parse_region_info(buf, index), name_);
  regions_[index] = region;
  return region;
}

Result<IrqInfo> VfioDeviceTransport::irq_info(uint32_t index) {
  IOVIRT_TRY_CTX(info, device_info(), "IRQ info");
  if (index >= info.num_irqs) {
    return fail(name_ + ": IRQ index " + std::to_string(index) + " does not exist", EINVAL);
  }
  if (irqs_[index]) return *irqs_[index];
  vfio_irq_info raw{};
  raw.argsz = sizeof raw;
  raw.index = index;
  if (ops_->ioctl(VFIO_DEVICE_GET_IRQ_INFO, &raw) != 0) {
    return fail_errno("VFIO_DEVICE_GET_IRQ_INFO " + name_ + " index " + std::to_string(index));
  }
  IOVIRT_TRY_CTX(irq, parse_irq_info(raw, index), name_);
  irqs_[index] = irq;
  return irq;
}

Result<uint64_t> VfioDeviceTransport::io_offset(uint32_t index, uint64_t offset, uint64_t len,
                                                bool write) {
  IOVIRT_TRY_CTX(r, region_info(index), write ? "region write" : "region read");
  if (!(write ? r.writable() : r.readable())) {
    return fail(name_ + ": region " + std::to_string(index) + " is not " +
                    (write ? "writable" : "readable"),
                EACCES);
  }
  if (offset > r.size || len > r.size - offset) {
    return fail(name_ + ": " + (write ? "write" : "read") + " of " + std::to_string(len) +
                    " bytes at " + std::to_string(offset) + " is outside region " +
                    std::to_string(index) + " (" + std::to_string(r.size) + " bytes)",
                EINVAL);
  }
  return r.offset + offset;  // no overflow: parse_region_info checked offset + size
}

Status VfioDeviceTransport::region_read(uint32_t index, uint64_t offset, std::span<uint8_t> data) {
  auto pos_r = io_offset(index, offset, data.size(), false);
  if (!pos_r) return std::unexpected(std::move(pos_r.error()));
  const uint64_t pos = *pos_r;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ops_->pread(data.data() + done, data.size() - done,
                        static_cast<off_t>(pos + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return fail_errno(name_ + ": read region " + std::to_string(index) + " at " +
                        std::to_string(offset + done));
    }
    if (n == 0) {
      return fail(name_ + ": short read of region " + std::to_string(index) + " at " +
                      std::to_string(offset + done),
                  EIO);
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Status VfioDeviceTransport::region_write(uint32_t index, uint64_t offset,
                                         std::span<const uint8_t> data) {
  auto pos_r = io_offset(index, offset, data.size(), true);
  if (!pos_r) return std::unexpected(std::move(pos_r.error()));
  const uint64_t pos = *pos_r;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ops_->pwrite(data.data() + done, data.size() - done,
                         static_cast<off_t>(pos + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return fail_errno(name_ + ": write region " + std::to_string(index) + " at " +
                        std::to_string(offset + done));
    }
    if (n == 0) {
      return fail(name_ + ": short write of region " + std::to_string(index) + " at " +
                      std::to_string(offset + done),
                  EIO);
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<RegionMapping> VfioDeviceTransport::map_region(uint32_t index, uint64_t offset,
                                                      uint64_t size) {
  IOVIRT_TRY_CTX(r, region_info(index), "map region");
  const std::string what = name_ + ": mmap region " + std::to_string(index) + " [" +
                           std::to_string(offset) + ", +" + std::to_string(size) + ")";
  if (size == 0 || offset % kHostPageSize != 0 || size % kHostPageSize != 0) {
    return fail(what + ": offset and size must be page-aligned and size non-zero", EINVAL);
  }
  bool inside = false;
  for (const auto& a : r.mmap_areas) {
    if (offset >= a.offset && offset - a.offset <= a.size && size <= a.size - (offset - a.offset)) {
      inside = true;
      break;
    }
  }
  if (!r.mappable() || !inside) {
    return fail(what + ": not inside one of the region's mmap-able areas", EINVAL);
  }
  int prot = 0;
  if (r.readable()) prot |= PROT_READ;
  if (r.writable()) prot |= PROT_WRITE;
  if (prot == 0) return fail(what + ": region is neither readable nor writable", EACCES);
  void* p = ops_->mmap(size, prot, static_cast<off_t>(r.offset + offset));
  if (p == MAP_FAILED) return fail_errno(what);
  return RegionMapping(p, size);
}

Status VfioDeviceTransport::set_irqs(uint32_t index, uint32_t flags, uint32_t start,
                                     std::span<const int> fds, const char* what) {
  const size_t bytes = sizeof(IrqSetHeader) + fds.size() * sizeof(int32_t);
  std::vector<uint32_t> buf((bytes + 3) / 4, 0);
  IrqSetHeader h{};
  h.argsz = static_cast<uint32_t>(bytes);
  h.flags = flags;
  h.index = index;
  h.start = start;
  h.count = static_cast<uint32_t>(fds.size());
  std::memcpy(buf.data(), &h, sizeof h);
  for (size_t i = 0; i < fds.size(); ++i) {
    const int32_t v = fds[i];
    std::memcpy(reinterpret_cast<uint8_t*>(buf.data()) + sizeof h + i * sizeof v, &v, sizeof v);
  }
  if (ops_->ioctl(VFIO_DEVICE_SET_IRQS, buf.data()) != 0) {
    return fail_errno("VFIO_DEVICE_SET_IRQS " + std::string(what) + " " + name_ + " index " +
                      std::to_string(index) + " vectors [" + std::to_string(start) + ", +" +
                      std::to_string(fds.size()) + ")");
  }
  return {};
}

Status VfioDeviceTransport::set_irq_eventfds(uint32_t index, uint32_t start,
                                             std::span<const int> fds) {
  IOVIRT_TRY_CTX(irq, irq_info(index), "set IRQ eventfds");
  if (fds.empty() || start > irq.count || fds.size() > irq.count - start) {
    return fail(name_ + ": IRQ index " + std::to_string(index) + " vectors [" +
                    std::to_string(start) + ", +" + std::to_string(fds.size()) +
                    ") outside the " + std::to_string(irq.count) + " the device has",
                EINVAL);
  }
  if ((irq.flags & VFIO_IRQ_INFO_EVENTFD) == 0) {
    return fail(name_ + ": IRQ index " + std::to_string(index) + " does not support eventfds",
                ENOTSUP);
  }
  return set_irqs(index, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, start, fds,
                  "trigger");
}

Status VfioDeviceTransport::disable_irq(uint32_t index) {
  IOVIRT_TRY_CTX(irq, irq_info(index), "disable IRQ");
  (void)irq;
  return set_irqs(index, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, {}, "disable");
}

Status VfioDeviceTransport::set_irq_unmask_eventfd(uint32_t index, int fd) {
  IOVIRT_TRY_CTX(irq, irq_info(index), "set IRQ unmask eventfd");
  if (irq.count == 0 || (irq.flags & VFIO_IRQ_INFO_MASKABLE) == 0) {
    return fail(name_ + ": IRQ index " + std::to_string(index) + " has no maskable vector",
                ENOTSUP);
  }
  const int one[1] = {fd};
  return set_irqs(index, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, 0, one,
                  "unmask");
}

Status VfioDeviceTransport::reset() {
  if (ops_->ioctl(VFIO_DEVICE_RESET, nullptr) != 0) return fail_errno("VFIO_DEVICE_RESET " + name_);
  return {};
}

}  // namespace iovirt::vfio
