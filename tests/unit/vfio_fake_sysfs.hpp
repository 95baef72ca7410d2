// A small fake sysfs + /dev tree for vfio/ host checks, built in a temporary directory.
//
// What it models (Documentation/ABI/testing/sysfs-bus-pci, sysfs-kernel-iommu_groups):
//   sys/devices/pci0000:00/<bdf>/              device directory with `class`
//   sys/bus/pci/devices/<bdf>                  symlink to it, as on a real system
//   <dev>/driver -> ../../../bus/pci/drivers/<d>, <dev>/iommu_group -> ../../../kernel/iommu_groups/<n>
//   sys/kernel/iommu_groups/<n>/devices/<bdf>  symlinks back to the device directories
//   dev/vfio/vfio, dev/vfio/<n>                plain files standing in for the character devices
// Nothing reacts to writes: the checks under test only read.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>

namespace iovirt::vfio::testing {

class VfioFakeTree {
 public:
  using path = std::filesystem::path;

  VfioFakeTree() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "iovirt-vfio-fake-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp");
    base_ = tmpl;
    std::filesystem::create_directories(sys() / "devices/pci0000:00");
    std::filesystem::create_directories(sys() / "bus/pci/devices");
    std::filesystem::create_directories(sys() / "bus/pci/drivers");
    std::filesystem::create_directories(sys() / "kernel/iommu_groups");
    std::filesystem::create_directories(dev() / "vfio");
  }
  ~VfioFakeTree() {
    std::error_code ec;
    std::filesystem::remove_all(base_, ec);
  }
  VfioFakeTree(const VfioFakeTree&) = delete;
  VfioFakeTree& operator=(const VfioFakeTree&) = delete;

  [[nodiscard]] path sys() const { return base_ / "sys"; }
  [[nodiscard]] path dev() const { return base_ / "dev"; }

  // A PCI function; group < 0: no IOMMU group link (IOMMU off).
  void add_device(const std::string& bdf, const std::optional<std::string>& driver, int group,
                  unsigned pci_class = 0x020000) {
    const auto d = dev_dir(bdf);
    std::filesystem::create_directories(d);
    std::filesystem::create_symlink("../../../devices/pci0000:00/" + bdf,
                                    sys() / "bus/pci/devices" / bdf);
    char cls[16];
    std::snprintf(cls, sizeof cls, "0x%06x", pci_class);
    put(d / "class", cls);
    if (driver) {
      std::filesystem::create_directories(sys() / "bus/pci/drivers" / *driver);
      std::filesystem::create_symlink("../../../bus/pci/drivers/" + *driver, d / "driver");
    }
    if (group >= 0) {
      const std::string g = std::to_string(group);
      std::filesystem::create_directories(sys() / "kernel/iommu_groups" / g / "devices");
      std::filesystem::create_symlink("../../../kernel/iommu_groups/" + g, d / "iommu_group");
      std::filesystem::create_symlink("../../../../devices/pci0000:00/" + bdf,
                                      sys() / "kernel/iommu_groups" / g / "devices" / bdf);
    }
  }
  // The VFIO character devices (plain files here).
  void add_vfio_nodes(const std::optional<int>& group) {
    put(dev() / "vfio/vfio", "");
    if (group) put(dev() / "vfio" / std::to_string(*group), "");
  }
  void put_sys(const std::string& rel, const std::string& value) {
    std::filesystem::create_directories((sys() / rel).parent_path());
    put(sys() / rel, value);
  }

 private:
  [[nodiscard]] path dev_dir(const std::string& bdf) const {
    return sys() / "devices/pci0000:00" / bdf;
  }
  static void put(const path& p, const std::string& v) {
    std::ofstream(p, std::ios::trunc) << v << "\n";
  }
  path base_;
};

}  // namespace iovirt::vfio::testing
