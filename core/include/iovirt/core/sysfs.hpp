// A view of sysfs rooted at an injectable directory ("/sys" in production, a temporary tree in
// unit tests), plus the PCI address type the sriov/ and vfio/ APIs speak.
//
// What SR-IOV management and VFIO group checks need: bounded attribute reads (sysfs attributes
// are at most one page), whole-value writes (one write(2) per value, as the kernel's store
// callbacks expect), symlink targets (driver, iommu_group, virtfnN, physfn) and directory
// listings.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt {

// A PCI function address in sysfs form DDDD:BB:DD.F (domain, bus, device, function), lower-case
// hex. parse() is strict: exactly 4:2:2.1 hex digits, device <= 0x1f, function <= 7.
struct PciAddress {
  std::uint16_t domain = 0;
  std::uint8_t bus = 0;
  std::uint8_t device = 0;
  std::uint8_t function = 0;

  static Result<PciAddress> parse(std::string_view s);
  [[nodiscard]] std::string to_string() const;
  friend auto operator<=>(const PciAddress&, const PciAddress&) = default;
};

class Sysfs {
 public:
  explicit Sysfs(std::filesystem::path root = "/sys");

  [[nodiscard]] const std::filesystem::path& root() const { return root_; }
  // root/bus/pci/devices/<addr> (a symlink into root/devices/... on a real system).
  [[nodiscard]] std::filesystem::path pci_device(const PciAddress& a) const;
  // root/bus/pci/drivers/<name>.
  [[nodiscard]] std::filesystem::path pci_driver(std::string_view name) const;
  // root/bus/pci/drivers_probe.
  [[nodiscard]] std::filesystem::path pci_drivers_probe() const;

  // Reads at most max_bytes, strips leading/trailing whitespace (sysfs values end in '\n').
  Result<std::string> read(const std::filesystem::path& p, std::size_t max_bytes = 4096) const;
  // Decimal or 0x-prefixed hex unsigned value.
  Result<std::uint64_t> read_uint(const std::filesystem::path& p) const;
  // One write(2) of value + '\n' into an existing attribute (never creates a file).
  Status write(const std::filesystem::path& p, std::string_view value) const;
  // The symlink's target as stored.
  Result<std::filesystem::path> readlink(const std::filesystem::path& p) const;
  // The last component of the symlink's target; nullopt when the link does not exist
  // (e.g. `driver` of an unbound device).
  Result<std::optional<std::string>> link_name(const std::filesystem::path& p) const;
  // Entry names (no "." / ".."), sorted.
  Result<std::vector<std::string>> list(const std::filesystem::path& dir) const;
  [[nodiscard]] bool exists(const std::filesystem::path& p) const;

 private:
  std::filesystem::path root_;
};

}  // namespace iovirt
