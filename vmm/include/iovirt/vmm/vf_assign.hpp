// `iovirt run --vf pf=...`: the VFs a VM takes from iovirt's pool, for the VM's whole life.
//
// acquire() leases one VF per --vf from sriov::VfPool (flock'ed lease file, VF reset and bound
// to vfio-pci by the pool), applies the requested network settings through the PF's netdev when
// the PF has one (saving what was there), and appends the VF to VmConfig::devices so the VM
// passes it through exactly like --device. The object keeps the leases (their lock fds) until
// release() or destruction, which restores the saved network settings, resets each VF, rebinds
// the recorded host driver and removes the lease. The settings to put back are written into the
// lease record before they are changed, so if iovirt dies instead (SIGKILL) the next --vf on that
// PF, reclaiming the VF (sriov/pool.hpp), restores them as well.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/sriov/pool.hpp"
#include "iovirt/sriov/vf_net.hpp"
#include "iovirt/vmm/config.hpp"
#include "iovirt/vmm/sriov_cli.hpp"

namespace iovirt {

class VfAssignments {
 public:
  struct Assigned {
    sriov::Lease lease;
    PciAddress pf;
    std::string netdev;  // empty when the PF has none (e.g. NVMe)
    unsigned index = 0;  // the VF's number on its PF (virtfnN)
    std::optional<sriov::VfNetSettings> saved;  // what to put back on release
  };

  // Leases, configures and binds one VF per cfg.vfs entry, appends them to cfg.devices. On any
  // failure the VFs taken so far are given back before the error is returned.
  static Result<std::unique_ptr<VfAssignments>> acquire(VmConfig& cfg, const std::string& vm_name,
                                                        const SriovCliEnv& env);
  ~VfAssignments();
  VfAssignments(const VfAssignments&) = delete;
  VfAssignments& operator=(const VfAssignments&) = delete;

  // Gives every VF back (reset, network settings, host driver, lease removed). Idempotent;
  // returns the first failure but tries every VF.
  Status release();

  // Per-PF gauges iovirt_sriov_vfs_{total,enabled,leased}{pf="..."} set from sysfs and the
  // lease directory now (the leases of every iovirt on the host, not only this VM's).
  void publish_metrics(MetricsRegistry& m) const;

  [[nodiscard]] const std::vector<Assigned>& assigned() const { return assigned_; }

 private:
  explicit VfAssignments(const SriovCliEnv& env);

  SriovCliEnv env_;
  sriov::Sriov sriov_;
  sriov::VfPool pool_;
  std::unique_ptr<sriov::VfNetConfig> own_net_;
  sriov::VfNetConfig* net_ = nullptr;
  std::vector<Assigned> assigned_;
};

}  // namespace iovirt
