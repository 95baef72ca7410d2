#include "iovirt/vfio/container.hpp"

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>
#include <utility>

#include "iovirt/core/log.hpp"

namespace iovirt::vfio {

namespace {

constexpr uint64_t kPage = 4096;

bool page_aligned(uint64_t v) {
  return v % kPage == 0;
}

std::string range_text(uint64_t iova, uint64_t size) {
  char b[64];
  std::snprintf(b, sizeof b, "[0x%llx, +0x%llx)", static_cast<unsigned long long>(iova),
                static_cast<unsigned long long>(size));
  return b;
}

}  // namespace

Result<std::unique_ptr<Type1Container>> Type1Container::open(const std::filesystem::path& dev_root) {
  const auto path = dev_root / "vfio/vfio";
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    auto e = fail_errno("open " + path.string() +
                        " (VFIO container): load the driver with `modprobe vfio-pci` and run "
                        "as root");
    return e;
  }
  const int ver = ::ioctl(fd.get(), VFIO_GET_API_VERSION);
  if (ver != VFIO_API_VERSION) {
    return fail("VFIO_GET_API_VERSION on " + path.string() + " returned " + std::to_string(ver) +
                    ", iovirt speaks version " + std::to_string(VFIO_API_VERSION),
                EINVAL);
  }
  if (::ioctl(fd.get(), VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0) {
    return fail("VFIO container " + path.string() +
                    " does not support the type1v2 IOMMU backend (is vfio_iommu_type1 loaded, "
                    "and the IOMMU enabled?)",
                ENOTSUP);
  }
  return std::unique_ptr<Type1Container>(new Type1Container(std::move(fd), dev_root));
}

Type1Container::~Type1Container() {
  // Closing a group fd detaches it from the container once its devices are closed; closing the
  // container fd then drops the IOMMU context (and any DMA mappings left).
  groups_.clear();
}

int Type1Container::group_fd(uint32_t group) const {
  auto it = groups_.find(group);
  return it == groups_.end() ? -1 : it->second.get();
}

Result<int> Type1Container::attach_group(uint32_t group) {
  if (auto it = groups_.find(group); it != groups_.end()) return it->second.get();
  const auto path = dev_root_ / "vfio" / std::to_string(group);
  Fd g(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!g) {
    if (errno == EBUSY) {
      return fail_errno("open " + path.string() +
                        ": the IOMMU group is already in use (another VMM or process has it open)");
    }
    return fail_errno("open " + path.string() + " (VFIO group " + std::to_string(group) + ")");
  }
  vfio_group_status st{};
  st.argsz = sizeof st;
  if (::ioctl(g.get(), VFIO_GROUP_GET_STATUS, &st) != 0) {
    return fail_errno("VFIO_GROUP_GET_STATUS on " + path.string());
  }
  if ((st.flags & VFIO_GROUP_FLAGS_VIABLE) == 0) {
    return fail("VFIO group " + std::to_string(group) +
                    " is not viable: every device in /sys/kernel/iommu_groups/" +
                    std::to_string(group) + "/devices must be bound to vfio-pci or unbound",
                EPERM);
  }
  if ((st.flags & VFIO_GROUP_FLAGS_CONTAINER_SET) == 0) {
    int cfd = fd_.get();
    if (::ioctl(g.get(), VFIO_GROUP_SET_CONTAINER, &cfd) != 0) {
      return fail_errno("VFIO_GROUP_SET_CONTAINER for group " + std::to_string(group));
    }
  }
  // The IOMMU model can only be chosen once a group is in the container (vfio.rst).
  if (!iommu_set_) {
    if (::ioctl(fd_.get(), VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) != 0) {
      auto e = fail_errno("VFIO_SET_IOMMU(TYPE1v2) after attaching group " +
                          std::to_string(group));
      (void)::ioctl(g.get(), VFIO_GROUP_UNSET_CONTAINER);
      return e;
    }
    iommu_set_ = true;
  }
  const int raw = g.get();
  groups_.emplace(group, std::move(g));
  return raw;
}

Result<OpenedDevice> Type1Container::open_device(const PciAddress& bdf, uint32_t group) {
  const std::string name = bdf.to_string();
  IOVIRT_TRY_CTX(gfd, attach_group(group), "open VFIO device " + name);
  const int dev = ::ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, name.c_str());
  if (dev < 0) {
    return fail_errno("VFIO_GROUP_GET_DEVICE_FD " + name + " in group " + std::to_string(group) +
                      " (is it in that group and not already open?)");
  }
  OpenedDevice out;
  out.device = Fd(dev);
  out.group_fd = gfd;
  out.group = group;
  return out;
}

Status Type1Container::map_dma(uint64_t iova, uint64_t size, void* host) {
  const uint64_t vaddr = reinterpret_cast<uintptr_t>(host);
  if (size == 0 || !page_aligned(iova) || !page_aligned(size) || !page_aligned(vaddr) ||
      iova + size < iova || vaddr + size < vaddr) {
    return fail("VFIO DMA map " + range_text(iova, size) +
                    ": iova, size and host address must be page-aligned, size non-zero, no wrap",
                EINVAL);
  }
  if (!iommu_set_) {
    return fail("VFIO DMA map " + range_text(iova, size) +
                    ": no device opened in this container yet (type1 needs a group first)",
                EINVAL);
  }
  vfio_iommu_type1_dma_map m{};
  m.argsz = sizeof m;
  m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  m.vaddr = vaddr;
  m.iova = iova;
  m.size = size;
  if (::ioctl(fd_.get(), VFIO_IOMMU_MAP_DMA, &m) != 0) {
    if (errno == ENOMEM) {
      return fail_errno("VFIO_IOMMU_MAP_DMA " + range_text(iova, size) +
                        ": pinning failed (RLIMIT_MEMLOCK too low? see `ulimit -l`)");
    }
    return fail_errno("VFIO_IOMMU_MAP_DMA " + range_text(iova, size));
  }
  return {};
}

Status Type1Container::unmap_dma(uint64_t iova, uint64_t size) {
  vfio_iommu_type1_dma_unmap u{};
  u.argsz = sizeof u;
  u.flags = 0;
  u.iova = iova;
  u.size = size;
  if (::ioctl(fd_.get(), VFIO_IOMMU_UNMAP_DMA, &u) != 0) {
    return fail_errno("VFIO_IOMMU_UNMAP_DMA " + range_text(iova, size));
  }
  // The kernel writes back how much it unmapped; anything else means the range did not match a
  // mapping exactly and pages may still be pinned.
  if (u.size != size) {
    return fail("VFIO_IOMMU_UNMAP_DMA " + range_text(iova, size) + " unmapped " +
                    std::to_string(u.size) + " bytes",
                EIO);
  }
  return {};
}

bool iommufd_available(const std::filesystem::path& dev_root) {
  std::error_code ec;
  return std::filesystem::exists(dev_root / "iommu", ec);
}

Result<std::unique_ptr<Container>> open_container(const std::filesystem::path& dev_root) {
  if (iommufd_available(dev_root)) {
    log_info("vfio: " + (dev_root / "iommu").string() +
             " exists but iovirt has no iommufd backend yet; using the type1 VFIO container");
  }
  auto c = Type1Container::open(dev_root);
  if (!c) return std::unexpected(std::move(c.error()));
  return std::unique_ptr<Container>(std::move(*c));
}

DmaMappings::DmaMappings(DmaMappings&& o) noexcept
    : container_(std::exchange(o.container_, nullptr)), ranges_(std::move(o.ranges_)) {
  o.ranges_.clear();
}

DmaMappings& DmaMappings::operator=(DmaMappings&& o) noexcept {
  if (this != &o) {
    (void)release();
    container_ = std::exchange(o.container_, nullptr);
    ranges_ = std::move(o.ranges_);
    o.ranges_.clear();
  }
  return *this;
}

DmaMappings::~DmaMappings() {
  auto st = release();
  if (!st) log_warn("vfio: " + st.error().message());
}

Status DmaMappings::release() {
  Status first;
  if (container_ != nullptr) {
    for (auto it = ranges_.rbegin(); it != ranges_.rend(); ++it) {
      auto st = container_->unmap_dma(it->iova, it->size);
      if (!st && first) first = std::unexpected(std::move(st.error()));
    }
  }
  ranges_.clear();
  container_ = nullptr;
  return first;
}

Result<DmaMappings> map_guest_memory(Container& c, const GuestMemory& mem) {
  DmaMappings out;
  out.container_ = &c;
  for (const auto& r : mem.regions()) {
    auto st = c.map_dma(r.gpa, r.size, r.host);
    if (!st) {
      (void)out.release();
      return std::unexpected(std::move(st.error()).context("DMA-map guest RAM for passthrough"));
    }
    out.ranges_.push_back({r.gpa, r.size});
  }
  return out;
}

}  // namespace iovirt::vfio
