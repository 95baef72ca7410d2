#include "iovirt/sriov/sriov.hpp"

#include <algorithm>
#include <charconv>
#include <thread>

#include "iovirt/core/log.hpp"

namespace iovirt::sriov {

namespace {

// "virtfn12" -> 12; nullopt for anything else.
std::optional<unsigned> virtfn_index(std::string_view name) {
  constexpr std::string_view prefix = "virtfn";
  if (!name.starts_with(prefix) || name.size() == prefix.size()) return std::nullopt;
  name.remove_prefix(prefix.size());
  unsigned v = 0;
  auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), v);
  if (ec != std::errc() || p != name.data() + name.size()) return std::nullopt;
  return v;
}

}  // namespace

Sriov::Sriov(Sysfs sysfs, Options opts) : sysfs_(std::move(sysfs)), opts_(std::move(opts)) {}

template <class Pred>
bool Sriov::wait_until(Pred pred) const {
  const auto deadline = std::chrono::steady_clock::now() + opts_.timeout;
  for (;;) {
    if (opts_.settle) opts_.settle();
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(opts_.poll_interval);
  }
}

Result<std::optional<std::string>> Sriov::driver_of(const PciAddress& dev) const {
  return sysfs_.link_name(sysfs_.pci_device(dev) / "driver");
}

Result<VfInfo> Sriov::vf(const PciAddress& addr, PciAddress* pf_out) const {
  const auto dir = sysfs_.pci_device(addr);
  if (!sysfs_.exists(dir)) {
    return fail("no PCI device " + addr.to_string() + " under " + dir.parent_path().string() +
                    ": check the address with `lspci -D` and that the PF has VFs enabled",
                ENOENT);
  }
  IOVIRT_TRY_CTX(physfn, sysfs_.link_name(dir / "physfn"), "VF " + addr.to_string());
  if (!physfn) {
    return fail("PCI device " + addr.to_string() +
                    " is not an SR-IOV VF (no physfn link): pass a VF address",
                EINVAL);
  }
  IOVIRT_TRY_CTX(pf_addr, PciAddress::parse(*physfn), "physfn of " + addr.to_string());
  VfInfo info;
  info.address = addr;
  // The index is the PF's virtfnN link pointing back at this VF.
  auto pf_dir = sysfs_.pci_device(pf_addr);
  IOVIRT_TRY_CTX(entries, sysfs_.list(pf_dir), "PF " + pf_addr.to_string());
  bool found = false;
  for (const auto& e : entries) {
    auto idx = virtfn_index(e);
    if (!idx) continue;
    auto target = sysfs_.link_name(pf_dir / e);
    if (target && *target && **target == addr.to_string()) {
      info.index = *idx;
      found = true;
      break;
    }
  }
  if (!found) {
    return fail("VF " + addr.to_string() + " is not listed by its PF " + pf_addr.to_string() +
                    " (no virtfnN link): the VFs are being torn down; retry",
                ENOENT);
  }
  IOVIRT_TRY_CTX(group, sysfs_.link_name(dir / "iommu_group"), "VF " + addr.to_string());
  if (group) {
    unsigned g = 0;
    auto [p, ec] = std::from_chars(group->data(), group->data() + group->size(), g);
    if (ec != std::errc() || p != group->data() + group->size()) {
      return fail("VF " + addr.to_string() + ": iommu_group link names '" + *group +
                      "', not a number",
                  EINVAL);
    }
    info.iommu_group = g;
  }
  IOVIRT_TRY_CTX(drv, driver_of(addr), "VF " + addr.to_string());
  info.driver = std::move(drv);
  if (pf_out != nullptr) *pf_out = pf_addr;
  return info;
}

Result<PfInfo> Sriov::pf(const PciAddress& addr) const {
  const auto dir = sysfs_.pci_device(addr);
  const std::string name = addr.to_string();
  if (!sysfs_.exists(dir)) {
    return fail("no PCI device " + name + " under " + dir.parent_path().string() +
                    ": check the address with `lspci -D`",
                ENOENT);
  }
  if (!sysfs_.exists(dir / "sriov_totalvfs")) {
    std::string m = "PCI device " + name + " is not SR-IOV capable (no sriov_totalvfs)";
    if (auto phys = sysfs_.link_name(dir / "physfn"); phys && *phys) {
      m += "; it is a VF of PF ";
      m += **phys;
      m += ": pass the PF";
    } else {
      m += ": pass a PF listed by discovery";
    }
    return fail(std::move(m), EINVAL);
  }
  PfInfo info;
  info.address = addr;
  IOVIRT_TRY_CTX(total, sysfs_.read_uint(dir / "sriov_totalvfs"), "PF " + name);
  if (total == 0) {
    return fail("PF " + name +
                    " reports sriov_totalvfs=0: SR-IOV is disabled by its firmware or driver",
                EINVAL);
  }
  IOVIRT_TRY_CTX(num, sysfs_.read_uint(dir / "sriov_numvfs"), "PF " + name);
  IOVIRT_TRY_CTX(vendor, sysfs_.read_uint(dir / "vendor"), "PF " + name);
  IOVIRT_TRY_CTX(device, sysfs_.read_uint(dir / "device"), "PF " + name);
  info.total_vfs = static_cast<unsigned>(std::min<std::uint64_t>(total, 0xffff));
  info.num_vfs = static_cast<unsigned>(std::min<std::uint64_t>(num, 0xffff));
  info.vendor = static_cast<std::uint16_t>(vendor);
  info.device = static_cast<std::uint16_t>(device);
  if (sysfs_.exists(dir / "sriov_drivers_autoprobe")) {
    IOVIRT_TRY_CTX(ap, sysfs_.read_uint(dir / "sriov_drivers_autoprobe"), "PF " + name);
    info.drivers_autoprobe = ap != 0;
  }
  IOVIRT_TRY_CTX(drv, driver_of(addr), "PF " + name);
  info.driver = std::move(drv);
  if (sysfs_.exists(dir / "net")) {
    IOVIRT_TRY_CTX(nets, sysfs_.list(dir / "net"), "PF " + name);
    info.netdevs = std::move(nets);
  }
  IOVIRT_TRY_CTX(entries, sysfs_.list(dir), "PF " + name);
  for (const auto& e : entries) {
    auto idx = virtfn_index(e);
    if (!idx) continue;
    IOVIRT_TRY_CTX(target, sysfs_.link_name(dir / e), "PF " + name);
    if (!target) continue;  // vanished between list and readlink (VFs being removed)
    IOVIRT_TRY_CTX(vf_addr, PciAddress::parse(*target), "PF " + name + " " + e);
    IOVIRT_TRY_CTX(v, vf(vf_addr), "PF " + name);
    info.vfs.push_back(std::move(v));
  }
  std::sort(info.vfs.begin(), info.vfs.end(),
            [](const VfInfo& a, const VfInfo& b) { return a.index < b.index; });
  return info;
}

Result<std::vector<PfInfo>> Sriov::discover_pfs() const {
  const auto devices = sysfs_.root() / "bus/pci/devices";
  IOVIRT_TRY_CTX(entries, sysfs_.list(devices), "discover SR-IOV PFs");
  std::vector<PfInfo> out;
  for (const auto& e : entries) {
    auto addr = PciAddress::parse(e);
    if (!addr) {
      log_warn("sriov: skipping " + (devices / e).string() + ": " + addr.error().message());
      continue;
    }
    const auto total_path = devices / e / "sriov_totalvfs";
    if (!sysfs_.exists(total_path)) continue;
    auto total = sysfs_.read_uint(total_path);
    if (!total || *total == 0) continue;
    IOVIRT_TRY_CTX(info, pf(*addr), "discover SR-IOV PFs");
    out.push_back(std::move(info));
  }
  return out;
}

Status Sriov::enable(const PciAddress& pf_addr, unsigned n) {
  IOVIRT_TRY_CTX(info, pf(pf_addr), "enable VFs");
  const std::string name = pf_addr.to_string();
  if (n == 0) {
    return fail("enable 0 VFs on PF " + name + ": use disable to remove the VFs", EINVAL);
  }
  if (n > info.total_vfs) {
    return fail("enable " + std::to_string(n) + " VFs on PF " + name +
                    ": the PF supports at most sriov_totalvfs=" + std::to_string(info.total_vfs),
                EINVAL);
  }
  if (info.num_vfs == n && info.vfs.size() == n) {
    log_info("sriov: PF " + name + " already has " + std::to_string(n) + " VFs");
    return {};
  }
  if (info.num_vfs != 0) {
    log_info("sriov: PF " + name + " has " + std::to_string(info.num_vfs) +
             " VFs; the kernel only changes the count through 0, disabling them first");
    IOVIRT_CHECK_CTX(disable(pf_addr), "enable " + std::to_string(n) + " VFs on PF " + name);
  }
  const auto dir = sysfs_.pci_device(pf_addr);
  log_info("sriov: PF " + name + ": enabling " + std::to_string(n) + " VFs (drivers_autoprobe=" +
           (info.drivers_autoprobe ? "1" : "0") + ")");
  if (auto st = sysfs_.write(dir / "sriov_numvfs", std::to_string(n)); !st) {
    std::string hint;
    if (st.error().code() == EBUSY) hint = " (VFs still present: disable first)";
    if (st.error().code() == ENOMEM || st.error().code() == ERANGE) {
      hint = " (no bus numbers or BAR space for the VFs: check the BIOS SR-IOV settings)";
    }
    return std::unexpected(std::move(st.error()).context("enable VFs on PF " + name + hint));
  }
  bool ok = wait_until([&] {
    auto num = sysfs_.read_uint(dir / "sriov_numvfs");
    if (!num || *num != n) return false;
    for (unsigned i = 0; i < n; ++i) {
      if (!sysfs_.exists(dir / ("virtfn" + std::to_string(i)))) return false;
    }
    return true;
  });
  if (!ok) {
    return fail("PF " + name + ": " + std::to_string(n) + " VFs requested but their virtfn links " +
                    "did not appear within " + std::to_string(opts_.timeout.count()) +
                    " ms: check dmesg for the PF driver's error",
                ETIMEDOUT);
  }
  return {};
}

Status Sriov::disable(const PciAddress& pf_addr) {
  IOVIRT_TRY_CTX(info, pf(pf_addr), "disable VFs");
  const std::string name = pf_addr.to_string();
  const auto dir = sysfs_.pci_device(pf_addr);
  if (info.num_vfs == 0 && info.vfs.empty()) return {};
  log_info("sriov: PF " + name + ": disabling " + std::to_string(info.num_vfs) + " VFs");
  if (auto st = sysfs_.write(dir / "sriov_numvfs", "0"); !st) {
    return std::unexpected(std::move(st.error()).context(
        "disable VFs on PF " + name + " (a VF in use by a driver that blocks removal?)"));
  }
  bool ok = wait_until([&] {
    auto num = sysfs_.read_uint(dir / "sriov_numvfs");
    if (!num || *num != 0) return false;
    auto entries = sysfs_.list(dir);
    if (!entries) return false;
    return std::none_of(entries->begin(), entries->end(),
                        [](const std::string& e) { return virtfn_index(e).has_value(); });
  });
  if (!ok) {
    return fail("PF " + name + ": VFs still present " + std::to_string(opts_.timeout.count()) +
                    " ms after writing 0 to sriov_numvfs: check dmesg",
                ETIMEDOUT);
  }
  return {};
}

Status Sriov::unbind(const PciAddress& dev, const std::string& current) {
  const std::string name = dev.to_string();
  auto unbind_path = sysfs_.pci_driver(current) / "unbind";
  if (!sysfs_.exists(unbind_path)) unbind_path = sysfs_.pci_device(dev) / "driver/unbind";
  if (auto st = sysfs_.write(unbind_path, name); !st) {
    return std::unexpected(std::move(st.error()).context(
        "unbind " + name + " from " + current + " (the driver refuses: stop what uses the device)"));
  }
  bool ok = wait_until([&] {
    auto d = driver_of(dev);
    return d && !*d;
  });
  if (!ok) {
    return fail("device " + name + " is still bound to " + current + " " +
                    std::to_string(opts_.timeout.count()) +
                    " ms after unbind: the driver refuses to let go; stop what uses the device",
                EBUSY);
  }
  return {};
}

Result<std::optional<std::string>> Sriov::bind(const PciAddress& dev, std::string_view driver) {
  const std::string name = dev.to_string();
  const std::string drv(driver);
  const auto dir = sysfs_.pci_device(dev);
  if (!sysfs_.exists(dir)) {
    return fail("bind " + name + " to " + drv + ": no such PCI device: check `lspci -D`", ENOENT);
  }
  if (!sysfs_.exists(sysfs_.pci_driver(drv))) {
    return fail("bind " + name + " to " + drv + ": driver " + drv + " is not loaded (no " +
                    sysfs_.pci_driver(drv).string() + "): run `modprobe " + drv + "`",
                ENOENT);
  }
  IOVIRT_TRY_CTX(current, driver_of(dev), "bind " + name);
  if (current && *current == drv) return current;
  IOVIRT_CHECK_CTX(sysfs_.write(dir / "driver_override", drv), "bind " + name + " to " + drv);
  if (current) IOVIRT_CHECK_CTX(unbind(dev, *current), "bind " + name + " to " + drv);
  IOVIRT_CHECK_CTX(sysfs_.write(sysfs_.pci_drivers_probe(), name), "bind " + name + " to " + drv);
  bool ok = wait_until([&] {
    auto d = driver_of(dev);
    return d && *d && **d == drv;
  });
  if (!ok) {
    auto now = driver_of(dev);
    std::string seen = now && *now ? **now : std::string("no driver");
    return fail("bind " + name + " to " + drv + ": after drivers_probe the device has " + seen +
                    " (timeout " + std::to_string(opts_.timeout.count()) +
                    " ms): check dmesg (for vfio-pci: is the IOMMU on and the group viable?)",
                ETIMEDOUT);
  }
  log_info("sriov: " + name + " bound to " + drv + " (was " +
           (current ? *current : std::string("unbound")) + ")");
  return current;
}

Status Sriov::restore(const PciAddress& dev, const std::optional<std::string>& driver) {
  const std::string name = dev.to_string();
  const auto dir = sysfs_.pci_device(dev);
  if (driver) {
    auto b = bind(dev, *driver);
    if (!b) return std::unexpected(std::move(b.error()).context("restore " + name));
    // Clear the override so the device is an ordinary host device again ("\n" -> empty).
    IOVIRT_CHECK_CTX(sysfs_.write(dir / "driver_override", ""), "restore " + name);
    return {};
  }
  IOVIRT_CHECK_CTX(sysfs_.write(dir / "driver_override", ""), "restore " + name);
  IOVIRT_TRY_CTX(current, driver_of(dev), "restore " + name);
  if (current) IOVIRT_CHECK_CTX(unbind(dev, *current), "restore " + name);
  IOVIRT_CHECK_CTX(sysfs_.write(sysfs_.pci_drivers_probe(), name), "restore " + name);
  // The device had no driver before: whichever host driver (if any) matches may take it now.
  // drivers_probe probes synchronously, so there is nothing to wait for; a fake tree still
  // needs its settle step.
  if (opts_.settle) opts_.settle();
  auto now = driver_of(dev);
  log_info("sriov: " + name + " returned to the host (" +
           (now && *now ? "driver " + **now : std::string("no driver")) + ")");
  return {};
}

Result<bool> Sriov::reset(const PciAddress& dev) {
  const auto p = sysfs_.pci_device(dev) / "reset";
  if (!sysfs_.exists(p)) return false;
  IOVIRT_CHECK_CTX(sysfs_.write(p, "1"), "reset " + dev.to_string());
  return true;
}

}  // namespace iovirt::sriov
