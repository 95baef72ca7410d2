#include "iovirt/vfio/host_checks.hpp"

#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <limits>

namespace iovirt::vfio {

namespace {

bool is_vfio_driver(std::string_view d) {
  return d.find("vfio") != std::string_view::npos;
}

// PCI-to-PCI bridges (class 0x0604xx): the kernel lets a group stay viable whatever drives them
// (pcieport), since a bridge does no DMA of its own.
bool is_bridge(const Sysfs& sysfs, const std::filesystem::path& dev) {
  auto cls = sysfs.read_uint(dev / "class");
  return cls && (*cls >> 8) == 0x0604;
}

std::string mib(uint64_t bytes) {
  return std::to_string((bytes + (1ULL << 20) - 1) >> 20);
}

}  // namespace

Result<GroupCheck> check_device(const Sysfs& sysfs, const PciAddress& addr,
                                const std::filesystem::path& dev_root) {
  const std::string bdf = addr.to_string();
  const auto dev = sysfs.pci_device(addr);
  if (!sysfs.exists(dev)) {
    return fail("no PCI device " + bdf + " (check the address; " +
                    (sysfs.root() / "bus/pci/devices").string() + " lists them)",
                ENODEV);
  }
  GroupCheck out;
  auto drv = sysfs.link_name(dev / "driver");
  if (!drv) return std::unexpected(std::move(drv.error()).context("PCI device " + bdf));
  if (!*drv || !is_vfio_driver(**drv)) {
    std::string m = "PCI device " + bdf + " is ";
    m += *drv ? "bound to " + **drv : std::string("not bound to any driver");
    m += ", not vfio-pci: ";
    if (*drv) m += "`echo " + bdf + " > " + (dev / "driver/unbind").string() + "; ";
    else m += "`";
    m += "echo vfio-pci > " + (dev / "driver_override").string() + "; echo " + bdf + " > " +
         sysfs.pci_drivers_probe().string() + "` (after `modprobe vfio-pci`)";
    return fail(std::move(m), EBUSY);
  }
  out.driver = **drv;

  auto grp = sysfs.link_name(dev / "iommu_group");
  if (!grp) return std::unexpected(std::move(grp.error()).context("PCI device " + bdf));
  if (!*grp) {
    return fail("PCI device " + bdf +
                    " has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the "
                    "kernel command line, VT-d/AMD-Vi in firmware) and reboot",
                ENODEV);
  }
  const std::string& gname = **grp;
  uint32_t group = 0;
  auto [ptr, ec] = std::from_chars(gname.data(), gname.data() + gname.size(), group);
  if (gname.empty() || ec != std::errc() || ptr != gname.data() + gname.size()) {
    return fail("PCI device " + bdf + ": IOMMU group link names '" + gname + "', not a number",
                EINVAL);
  }
  out.group = group;

  const auto gdir = sysfs.root() / "kernel/iommu_groups" / gname / "devices";
  auto members = sysfs.list(gdir);
  if (!members) return std::unexpected(std::move(members.error()).context("IOMMU group " + gname));
  for (const auto& m : *members) {
    out.group_members.push_back(m);
    if (m == bdf) continue;
    const auto mdev = gdir / m;
    auto mdrv = sysfs.link_name(mdev / "driver");
    if (!mdrv) return std::unexpected(std::move(mdrv.error()).context("IOMMU group " + gname));
    if (!*mdrv || is_vfio_driver(**mdrv) || **mdrv == "pci-stub" || is_bridge(sysfs, mdev)) continue;
    return fail("IOMMU group " + gname + " of " + bdf + " also holds " + m + ", bound to " +
                    **mdrv + ": all devices of a group go to the guest together; bind " + m +
                    " to vfio-pci too (or unbind it: `echo " + m + " > " +
                    (sysfs.pci_driver(**mdrv) / "unbind").string() + "`)",
                EBUSY);
  }

  std::error_code fec;
  if (!std::filesystem::exists(dev_root / "vfio/vfio", fec)) {
    return fail((dev_root / "vfio/vfio").string() +
                    " is missing: load VFIO with `modprobe vfio-pci`",
                ENOENT);
  }
  const auto gnode = dev_root / "vfio" / gname;
  if (!std::filesystem::exists(gnode, fec)) {
    return fail(gnode.string() + " is missing although " + bdf +
                    " is bound to " + out.driver + ": `modprobe vfio-pci` (and check udev)",
                ENOENT);
  }
  if (::access(gnode.c_str(), R_OK | W_OK) != 0) {
    return fail_errno(gnode.string() + " is not accessible: run as root or give this user the "
                                       "group node (chown/udev rule)");
  }
  return out;
}

Result<MemlockFacts> current_memlock_facts() {
  MemlockFacts f;
  __user_cap_header_struct hdr{};
  hdr.version = _LINUX_CAPABILITY_VERSION_3;
  hdr.pid = 0;
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
  if (::syscall(SYS_capget, &hdr, data) == 0) {
    f.cap_ipc_lock = (data[CAP_IPC_LOCK / 32].effective & (1U << (CAP_IPC_LOCK % 32))) != 0;
  } else {
    f.cap_ipc_lock = ::geteuid() == 0;
  }
  rlimit rl{};
  if (::getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return fail_errno("getrlimit(RLIMIT_MEMLOCK)");
  f.limit_bytes = rl.rlim_cur == RLIM_INFINITY ? std::numeric_limits<uint64_t>::max()
                                               : static_cast<uint64_t>(rl.rlim_cur);
  return f;
}

Status check_memlock(uint64_t bytes_needed, const MemlockFacts& facts) {
  if (facts.cap_ipc_lock || facts.limit_bytes >= bytes_needed) return {};
  return fail("VFIO needs " + mib(bytes_needed) +
                  " MiB of locked memory for guest RAM but RLIMIT_MEMLOCK is " +
                  std::to_string(facts.limit_bytes >> 20) +
                  " MiB: run as root or raise it (ulimit -l / systemd LimitMEMLOCK)",
              ENOMEM);
}

Status check_memlock(uint64_t bytes_needed) {
  auto f = current_memlock_facts();
  if (!f) return std::unexpected(std::move(f.error()));
  return check_memlock(bytes_needed, *f);
}

}  // namespace iovirt::vfio
