// SR-IOV physical functions and their virtual functions, driven through sysfs (Sysfs root is
// injectable so unit tests run on a fake tree; see tests/unit/sriov_fake_sysfs.hpp).
//
// Kernel ABI used (Documentation/ABI/testing/sysfs-bus-pci):
//   <pf>/sriov_totalvfs, sriov_numvfs (write N; the kernel refuses N -> M with both non-zero, so
//   a change goes through 0), sriov_drivers_autoprobe (whether new VFs are probed), virtfnN -> VF,
//   <vf>/physfn -> PF, <dev>/driver -> bound driver, <dev>/iommu_group -> group, <dev>/driver_override,
//   <dev>/reset, bus/pci/drivers/<d>/unbind, bus/pci/drivers_probe.
// Nothing here relies on udev: every change is followed by a bounded poll of sysfs until the
// expected state is visible. The poll calls Options::settle first, the seam a fake tree uses to
// apply pending writes (the real kernel applies them synchronously or asynchronously on its own).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/sysfs.hpp"

namespace iovirt::sriov {

inline constexpr std::string_view kVfioPci = "vfio-pci";

struct VfInfo {
  unsigned index = 0;  // N of the PF's virtfnN link
  PciAddress address;
  std::optional<unsigned> iommu_group;  // none without an IOMMU
  std::optional<std::string> driver;    // none when unbound
};

struct PfInfo {
  PciAddress address;
  std::uint16_t vendor = 0;
  std::uint16_t device = 0;
  std::optional<std::string> driver;
  std::vector<std::string> netdevs;  // <pf>/net/* (empty for non-network PFs, e.g. NVMe)
  unsigned total_vfs = 0;
  unsigned num_vfs = 0;
  bool drivers_autoprobe = true;
  std::vector<VfInfo> vfs;  // ordered by index
};

struct Options {
  // Upper bound of every wait for sysfs to reflect a change.
  std::chrono::milliseconds timeout{5000};
  std::chrono::milliseconds poll_interval{5};
  // Called before each poll (see the file comment); empty on a real system.
  std::function<void()> settle;
};

class Sriov {
 public:
  explicit Sriov(Sysfs sysfs = Sysfs(), Options opts = {});

  [[nodiscard]] const Sysfs& sysfs() const { return sysfs_; }
  [[nodiscard]] const Options& options() const { return opts_; }

  // Every PCI device with sriov_totalvfs > 0, ordered by address.
  Result<std::vector<PfInfo>> discover_pfs() const;
  // One PF; errors say whether the address is unknown or the device is not SR-IOV capable.
  Result<PfInfo> pf(const PciAddress& addr) const;
  // One VF (a device with a physfn link); also tells its PF.
  Result<VfInfo> vf(const PciAddress& addr, PciAddress* pf_out = nullptr) const;
  // The driver the device is bound to, none when unbound.
  Result<std::optional<std::string>> driver_of(const PciAddress& dev) const;

  // Creates n VFs (1 <= n <= sriov_totalvfs). If a different non-zero count is enabled, it goes
  // through 0 first (the kernel refuses a direct change). Waits until the n virtfn links exist.
  // Whether the new VFs get a host driver is the PF's sriov_drivers_autoprobe, left as it is.
  Status enable(const PciAddress& pf, unsigned n);
  // Writes 0 and waits until the virtfn links are gone.
  Status disable(const PciAddress& pf);

  // Binds dev to `driver` (e.g. kVfioPci): driver_override := driver, unbind from the current
  // driver, drivers_probe, then wait until dev/driver names `driver`. driver_override stays set
  // so that a later probe does not hand the device back to a host driver. Returns the driver the
  // device had before (none when it was unbound), which is what restore() takes back.
  Result<std::optional<std::string>> bind(const PciAddress& dev, std::string_view driver);
  // Gives dev back to the host: with a driver, binds to it and then clears driver_override; with
  // none, clears driver_override, unbinds and lets drivers_probe pick (the device may stay
  // unbound; that is accepted).
  Status restore(const PciAddress& dev, const std::optional<std::string>& driver);
  // Function-level reset through dev/reset when the attribute exists; false when absent.
  Result<bool> reset(const PciAddress& dev);

 private:
  template <class Pred>
  bool wait_until(Pred pred) const;
  Status unbind(const PciAddress& dev, const std::string& current);

  Sysfs sysfs_;
  Options opts_;
};

}  // namespace iovirt::sriov
