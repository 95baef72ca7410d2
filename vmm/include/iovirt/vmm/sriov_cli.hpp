// `iovirt sriov ...`: the operator's view of SR-IOV PFs, VFs and iovirt's VF pool.
//
// Parsing is in config.cpp (parse_sriov_args, pure); this runs a parsed command against a sysfs
// root and a run directory, so unit tests point it at a fake tree (tests/unit/sriov_fake_sysfs.hpp)
// with a fake VfNetConfig. Output goes to `out` (a table, or JSON with --json); a failure is one
// line in `err` and exit status 1.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "iovirt/sriov/nvme_virt.hpp"
#include "iovirt/sriov/sriov.hpp"
#include "iovirt/sriov/vf_net.hpp"
#include "iovirt/vmm/config.hpp"

namespace iovirt {

struct SriovCliEnv {
  std::filesystem::path sysfs_root = "/sys";
  std::filesystem::path run_dir = "/run/iovirt";  // leases live in run_dir/sriov
  sriov::Options options;                          // settle hook for a fake tree
  sriov::VfNetConfig* net = nullptr;               // nullptr: rtnetlink (netlink_vf_config())
  // Opens the admin interface of NVMe controller `ctrl` (e.g. "nvme0"); empty: /dev/<ctrl>.
  std::function<Result<std::unique_ptr<sriov::NvmeAdmin>>(const std::string& ctrl)> nvme_open;

  // IOVIRT_SYSFS_ROOT (default /sys) and IOVIRT_RUN_DIR (default /run/iovirt).
  static SriovCliEnv from_environment();
  [[nodiscard]] std::filesystem::path lease_dir() const { return run_dir / "sriov"; }
};

// Runs one command; returns the exit status (0, or 1 with the error line in err).
int run_sriov(const SriovArgs& args, const SriovCliEnv& env, std::string& out, std::string& err);

// A JSON string literal (quotes included) with RFC 8259 escaping.
std::string json_quote(std::string_view s);

}  // namespace iovirt
