// A fake sysfs tree for sriov/ unit tests, built in a temporary directory.
//
// What it models (the parts of Documentation/ABI/testing/sysfs-bus-pci that sriov/ uses):
//   devices/pci0000:00/<addr>/        device directories: vendor, device, driver_override ("(null)"
//                                     when unset), reset; PFs also sriov_totalvfs, sriov_numvfs,
//                                     sriov_drivers_autoprobe, sriov_vf_device, net/<ifname>/
//   bus/pci/devices/<addr>            symlinks to the directories above, as on a real system
//   <dev>/driver, <dev>/iommu_group   relative symlinks to bus/pci/drivers/<d>, kernel/iommu_groups/<n>
//   <pf>/virtfnN, <vf>/physfn         relative symlinks between PF and VFs
//   bus/pci/drivers/<d>/{bind,unbind} and bus/pci/drivers_probe
// How it reacts: nothing happens on write; settle() plays the kernel and applies what was written
// (the library calls it through sriov::Options::settle before each poll):
//   - sriov_numvfs: 0 -> N creates N VFs (function pf+1+i on the PF's bus/device, one new IOMMU
//     group each, bound to the PF's VF driver when sriov_drivers_autoprobe is 1 and that driver is
//     loaded); N -> 0 removes them; N -> M with both non-zero, or above sriov_totalvfs, is what the
//     kernel refuses with EBUSY/ERANGE: the fake reverts the value and counts a violation.
//   - drivers/<d>/unbind: removes the driver link (unless the driver was added as refusing unbind:
//     then the device stays bound, as with a driver whose remove() waits on a user).
//   - drivers/<d>/bind, drivers_probe: bind an unbound device; drivers_probe honours
//     driver_override, else the device's "native" driver (the one whose ID table would match).
//   - reset: counts function resets per device (reset_count()).
// Write-only triggers (bind, unbind, drivers_probe, reset) are FIFOs kept open by this object, so
// every write is one queued event even when several processes (fork()ed tests) write at once, as
// with the kernel; settle() serializes itself with an flock so processes can all call it.
// Create VFs (set_numvfs / enable) in the process that owns the FakeSysfs: the FIFOs' keeper fds
// live where they were made, and a FIFO without one would block its next writer.
// What it does not model: config space, BARs, real probing (any named, loaded driver binds), bus
// numbering beyond the PF's own device, hotplug/udev events, VF removal refusals, asynchronous
// probing delays (everything lands at the next settle()).
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "iovirt/core/fd.hpp"
#include "iovirt/core/sysfs.hpp"

namespace iovirt::sriov::testing {

class FakeSysfs {
 public:
  using path = std::filesystem::path;

  FakeSysfs() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "iovirt-fake-sysfs-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp");
    base_ = tmpl;
    root_ = base_ / "sys";
    std::filesystem::create_directories(root_ / "devices/pci0000:00");
    std::filesystem::create_directories(root_ / "bus/pci/devices");
    std::filesystem::create_directories(root_ / "bus/pci/drivers");
    std::filesystem::create_directories(root_ / "kernel/iommu_groups");
    make_fifo(root_ / "bus/pci/drivers_probe");
    put(base_ / "violations", "0");
    put(base_ / "next_group", "10");
  }
  ~FakeSysfs() {
    keep_.clear();
    std::error_code ec;
    std::filesystem::remove_all(base_, ec);
  }
  FakeSysfs(const FakeSysfs&) = delete;
  FakeSysfs& operator=(const FakeSysfs&) = delete;

  [[nodiscard]] const path& root() const { return root_; }
  // A scratch directory next to the tree (e.g. for lease files).
  [[nodiscard]] path scratch(const std::string& name) const { return base_ / name; }

  void add_driver(const std::string& name, bool refuses_unbind = false) {
    auto d = root_ / "bus/pci/drivers" / name;
    std::filesystem::create_directories(d);
    make_fifo(d / "bind");
    make_fifo(d / "unbind");
    if (refuses_unbind) put(d / ".fake_refuses_unbind", "1");
  }

  // A PCI function; native_driver is the driver that would match it on probe.
  void add_device(const std::string& addr, unsigned vendor, unsigned device,
                  const std::optional<std::string>& driver = std::nullopt,
                  const std::optional<std::string>& native_driver = std::nullopt) {
    auto d = dev_dir(addr);
    std::filesystem::create_directories(d);
    std::filesystem::create_symlink("../../../devices/pci0000:00/" + addr,
                                    root_ / "bus/pci/devices" / addr);
    put(d / "vendor", hex4(vendor));
    put(d / "device", hex4(device));
    put(d / "driver_override", "(null)");
    make_fifo(d / "reset");
    put(d / ".fake_resets", "0");
    if (native_driver) put(d / ".fake_native_driver", *native_driver);
    new_group(addr);
    if (driver) link_driver(addr, *driver);
  }

  struct PfSpec {
    std::string addr;  // function 0; VFs take functions 1..total
    unsigned vendor = 0x1b36;
    unsigned device = 0x0010;
    unsigned vf_device = 0x0010;
    std::optional<std::string> driver;
    std::optional<std::string> vf_driver;  // native driver of the VFs
    unsigned total_vfs = 2;
    bool autoprobe = true;
    std::vector<std::string> netdevs;
  };
  void add_pf(const PfSpec& s) {
    add_device(s.addr, s.vendor, s.device, s.driver, s.driver);
    auto d = dev_dir(s.addr);
    put(d / "sriov_totalvfs", std::to_string(s.total_vfs));
    put(d / "sriov_numvfs", "0");
    put(d / "sriov_drivers_autoprobe", s.autoprobe ? "1" : "0");
    put(d / "sriov_vf_device", hex4(s.vf_device));
    put(d / ".fake_vf_device", std::to_string(s.vf_device));
    if (s.vf_driver) put(d / ".fake_vf_driver", *s.vf_driver);
    for (const auto& n : s.netdevs) std::filesystem::create_directories(d / "net" / n);
  }

  // Test-side direct manipulation (not through the library).
  void link_driver(const std::string& addr, const std::string& driver) {
    std::error_code ec;
    std::filesystem::create_symlink("../../../bus/pci/drivers/" + driver, dev_dir(addr) / "driver",
                                    ec);
  }
  void set_numvfs(const std::string& pf, unsigned n) {
    put(dev_dir(pf) / "sriov_numvfs", std::to_string(n));
    settle();
  }

  [[nodiscard]] std::optional<std::string> driver(const std::string& addr) const {
    std::error_code ec;
    auto t = std::filesystem::read_symlink(dev_dir(addr) / "driver", ec);
    if (ec) return std::nullopt;
    return t.filename().string();
  }
  // As the kernel shows it: a cleared driver_override reads "(null)".
  [[nodiscard]] std::string attr(const std::string& addr, const std::string& name) const {
    std::string v = get(dev_dir(addr) / name);
    if (name == "driver_override" && v.empty()) v = "(null)";
    return v;
  }
  [[nodiscard]] int violations() const { return std::stoi(get(base_ / "violations")); }
  [[nodiscard]] int reset_count(const std::string& addr) const {
    return std::stoi(get(dev_dir(addr) / ".fake_resets"));
  }
  [[nodiscard]] bool device_exists(const std::string& addr) const {
    return std::filesystem::exists(dev_dir(addr));
  }

  // Plays the kernel: applies every write made since the last call (see the file comment).
  void settle() {
    Fd lock(::open((base_ / "kernel.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (lock) ::flock(lock.get(), LOCK_EX);
    for (const auto& e : std::filesystem::directory_iterator(root_ / "devices/pci0000:00")) {
      if (std::filesystem::exists(e.path() / "sriov_numvfs")) apply_numvfs(e.path());
    }
    for (const auto& e : std::filesystem::directory_iterator(root_ / "bus/pci/drivers")) {
      const std::string drv = e.path().filename().string();
      for (const auto& addr : drain(e.path() / "unbind")) {
        if (std::filesystem::exists(e.path() / ".fake_refuses_unbind")) continue;
        if (driver(addr) == drv) {
          std::error_code ec;
          std::filesystem::remove(dev_dir(addr) / "driver", ec);
        }
      }
      for (const auto& addr : drain(e.path() / "bind")) {
        if (std::filesystem::exists(dev_dir(addr)) && !driver(addr)) link_driver(addr, drv);
      }
    }
    for (const auto& addr : drain(root_ / "bus/pci/drivers_probe")) probe(addr);
    for (const auto& e : std::filesystem::directory_iterator(root_ / "devices/pci0000:00")) {
      auto n = drain(e.path() / "reset").size();
      if (n > 0) {
        put(e.path() / ".fake_resets",
            std::to_string(std::stoi(get(e.path() / ".fake_resets")) + static_cast<int>(n)));
      }
    }
  }

 private:
  [[nodiscard]] path dev_dir(const std::string& addr) const {
    return root_ / "devices/pci0000:00" / addr;
  }
  static std::string hex4(unsigned v) {
    char b[16];
    std::snprintf(b, sizeof b, "0x%04x", v);
    return b;
  }
  static void put(const path& p, const std::string& v) {
    std::ofstream(p, std::ios::trunc) << v << "\n";
  }
  static std::string get(const path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string s = ss.str();
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    while (!s.empty() && s.front() == '\n') s.erase(0, 1);
    return s;
  }
  void make_fifo(const path& p) {
    if (::mkfifo(p.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + p.string());
    // Keep a reader+writer open so writers never block and queued writes are never lost.
    keep_.emplace_back(::open(p.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  }
  // Reads every queued write from a trigger FIFO: one line (address) per write.
  static std::vector<std::string> drain(const path& p) {
    std::vector<std::string> out;
    if (!std::filesystem::exists(p)) return out;
    Fd fd(::open(p.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!fd) return out;
    std::string data;
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n <= 0) break;
      data.append(buf, static_cast<std::size_t>(n));
    }
    std::istringstream in(data);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) out.push_back(line);
    }
    return out;
  }
  void new_group(const std::string& addr) {
    int g = std::stoi(get(base_ / "next_group"));
    put(base_ / "next_group", std::to_string(g + 1));
    std::filesystem::create_directories(root_ / "kernel/iommu_groups" / std::to_string(g));
    std::filesystem::create_symlink("../../../kernel/iommu_groups/" + std::to_string(g),
                                    dev_dir(addr) / "iommu_group");
  }
  void probe(const std::string& addr) {
    if (!std::filesystem::exists(dev_dir(addr)) || driver(addr)) return;
    // Never write back into attributes the library writes: another process may be mid-write
    // (open with O_TRUNC, then write), and the fake would clobber its value.
    std::string ov = get(dev_dir(addr) / "driver_override");
    std::optional<std::string> target;
    if (!ov.empty() && ov != "(null)") {
      target = ov;  // with an override only that driver may bind
    } else if (std::filesystem::exists(dev_dir(addr) / ".fake_native_driver")) {
      target = get(dev_dir(addr) / ".fake_native_driver");
    }
    if (target && std::filesystem::exists(root_ / "bus/pci/drivers" / *target)) {
      link_driver(addr, *target);
    }
  }
  void violation() {
    put(base_ / "violations", std::to_string(violations() + 1));
  }
  void apply_numvfs(const path& pf) {
    const std::string pf_addr = pf.filename().string();
    unsigned current = 0;
    while (std::filesystem::is_symlink(pf / ("virtfn" + std::to_string(current)))) ++current;
    const std::string want_s = get(pf / "sriov_numvfs");
    unsigned want = want_s.empty() ? 0U : static_cast<unsigned>(std::stoul(want_s));
    const unsigned total = static_cast<unsigned>(std::stoul(get(pf / "sriov_totalvfs")));
    if (want == current) return;
    if ((want != 0 && current != 0) || want > total) {
      violation();  // the kernel returns EBUSY / ERANGE and keeps the old count
      put(pf / "sriov_numvfs", std::to_string(current));
      return;
    }
    const std::string prefix = pf_addr.substr(0, 11);  // "DDDD:BB:DD."
    if (want == 0) {
      for (unsigned i = 0; i < current; ++i) {
        const std::string vf = prefix + std::to_string(i + 1);
        std::filesystem::remove(pf / ("virtfn" + std::to_string(i)));
        std::filesystem::remove(root_ / "bus/pci/devices" / vf);
        std::filesystem::remove_all(dev_dir(vf));
      }
      return;
    }
    const unsigned vf_device = static_cast<unsigned>(std::stoul(get(pf / ".fake_vf_device")));
    const std::string vendor = get(pf / "vendor");
    std::optional<std::string> vf_driver;
    if (std::filesystem::exists(pf / ".fake_vf_driver")) vf_driver = get(pf / ".fake_vf_driver");
    const bool autoprobe = get(pf / "sriov_drivers_autoprobe") == "1";
    for (unsigned i = 0; i < want; ++i) {
      const std::string vf = prefix + std::to_string(i + 1);
      add_device(vf, static_cast<unsigned>(std::stoul(vendor, nullptr, 16)), vf_device,
                 std::nullopt, vf_driver);
      std::filesystem::create_symlink("../" + pf_addr, dev_dir(vf) / "physfn");
      std::filesystem::create_symlink("../" + vf, pf / ("virtfn" + std::to_string(i)));
      if (autoprobe) probe(vf);
    }
  }

  path base_;
  path root_;
  std::vector<Fd> keep_;
};

}  // namespace iovirt::sriov::testing
