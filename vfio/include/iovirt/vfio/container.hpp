// The DMA side of passthrough: an IOMMU context ("container") the host kernel programs so that the
// device's DMA to I/O virtual address X reaches guest RAM at guest physical address X.
//
// Container is the interface; Type1Container is the legacy VFIO container (/dev/vfio/vfio with the
// VFIO_TYPE1v2_IOMMU backend, devices reached through their IOMMU group /dev/vfio/N). An iommufd
// implementation (/dev/iommu + /dev/vfio/devices/vfioX cdevs, Linux >= 6.2 for the cdev path)
// implements the same interface later: open_device() hides whether a group exists.
//
// Lifetime: DmaMappings and every device fd opened through a container must be destroyed before
// the container (the kernel keeps the group attached while device fds are open).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/sysfs.hpp"

namespace iovirt::vfio {

// A device fd plus the group fd it came through (the group fd is owned by the container and
// stays valid until the container is destroyed; KvmVfioDevice::add_group needs it). group_fd is
// -1 for a backend without groups (iommufd cdevs).
struct OpenedDevice {
  Fd device;
  int group_fd = -1;
  uint32_t group = 0;
};

class Container {
 public:
  virtual ~Container() = default;
  // "type1" or "iommufd": for logs and the interrupt/DMA report.
  [[nodiscard]] virtual std::string_view kind() const = 0;
  // Maps [iova, iova + size) to host memory at `host` for device reads and writes. iova, size and
  // host must be page-aligned and size non-zero; the pages are pinned (they count against
  // RLIMIT_MEMLOCK: see check_memlock()). Needs at least one device opened first (type1 sets its
  // IOMMU model when the first group joins).
  virtual Status map_dma(uint64_t iova, uint64_t size, void* host) = 0;
  // Unmaps exactly a range previously mapped by map_dma.
  virtual Status unmap_dma(uint64_t iova, uint64_t size) = 0;
  // Opens the device `bdf` of IOMMU group `group` (from check_device()), attaching the group to
  // this container the first time it is seen. Two devices of one group share one group fd.
  virtual Result<OpenedDevice> open_device(const PciAddress& bdf, uint32_t group) = 0;
};

// Legacy VFIO container with the type1v2 IOMMU backend.
class Type1Container final : public Container {
 public:
  // Opens dev_root/vfio/vfio, checks VFIO_GET_API_VERSION == VFIO_API_VERSION and that
  // VFIO_TYPE1v2_IOMMU is supported.
  static Result<std::unique_ptr<Type1Container>> open(const std::filesystem::path& dev_root = "/dev");

  Type1Container(const Type1Container&) = delete;
  Type1Container& operator=(const Type1Container&) = delete;
  ~Type1Container() override;

  [[nodiscard]] std::string_view kind() const override { return "type1"; }
  Status map_dma(uint64_t iova, uint64_t size, void* host) override;
  Status unmap_dma(uint64_t iova, uint64_t size) override;
  Result<OpenedDevice> open_device(const PciAddress& bdf, uint32_t group) override;

  // The group fd of `group` if it is attached, else -1.
  [[nodiscard]] int group_fd(uint32_t group) const;
  [[nodiscard]] int fd() const { return fd_.get(); }

 private:
  Type1Container(Fd fd, std::filesystem::path dev_root)
      : fd_(std::move(fd)), dev_root_(std::move(dev_root)) {}
  // Opens dev_root/vfio/N, checks VFIO_GROUP_GET_STATUS viable, VFIO_GROUP_SET_CONTAINER, and
  // VFIO_SET_IOMMU(TYPE1v2) when it is the first group.
  Result<int> attach_group(uint32_t group);

  Fd fd_;
  std::filesystem::path dev_root_;
  std::map<uint32_t, Fd> groups_;  // the group registry: one open fd per IOMMU group
  bool iommu_set_ = false;
};

// Which container backend this host offers. iommufd needs /dev/iommu (CONFIG_IOMMUFD, Linux >=
// 6.2 for VFIO device cdevs); the 6.1 lab kernel has neither, and iovirt has no iommufd backend
// yet, so open_container() always returns a Type1Container and only logs when /dev/iommu exists.
[[nodiscard]] bool iommufd_available(const std::filesystem::path& dev_root = "/dev");
Result<std::unique_ptr<Container>> open_container(const std::filesystem::path& dev_root = "/dev");

// Every guest RAM region DMA-mapped at iova == gpa, unmapped (in reverse order) on destruction.
// Holds a reference to the container: destroy it before the container.
class DmaMappings final {
 public:
  DmaMappings() = default;
  DmaMappings(DmaMappings&& o) noexcept;
  DmaMappings& operator=(DmaMappings&& o) noexcept;
  DmaMappings(const DmaMappings&) = delete;
  DmaMappings& operator=(const DmaMappings&) = delete;
  ~DmaMappings();

  struct Range {
    uint64_t iova;
    uint64_t size;
  };
  [[nodiscard]] const std::vector<Range>& ranges() const { return ranges_; }
  // Unmaps everything now; the first failure is returned, the rest are still attempted.
  Status release();

 private:
  friend Result<DmaMappings> map_guest_memory(Container& c, const GuestMemory& mem);
  Container* container_ = nullptr;
  std::vector<Range> ranges_;
};

// Maps every region of `mem` at iova = gpa. On failure, what was mapped is unmapped again.
Result<DmaMappings> map_guest_memory(Container& c, const GuestMemory& mem);

}  // namespace iovirt::vfio
