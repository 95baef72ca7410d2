// The VF pool: which VF of a PF belongs to which VM, crash-safe across processes.
//
// One lease file per VF, named by its address, in a lease directory (default /run/iovirt/sriov:
// tmpfs, so leases do not survive a reboot, and neither do VF bindings). A lease is held by an
// flock(LOCK_EX) on an fd the holder keeps open for the VM's whole life: the kernel drops the
// lock when the holder dies, however it dies (SIGKILL included), so "file present, lock free"
// means the holder is gone and the VF is reclaimable. The file records what reclaim needs:
//   pid=<holder pid>  vm=<VM name>  vf=<VF>  pf=<PF>  restore_driver=<driver or empty>  since=<unix s>
//   [net_dev=<PF netdev>  net_index=<VF index>  net_restore=<VF network settings to put back>]
// (key=value lines). Reclaim resets the VF (its `reset` attribute when present), binds it back to
// restore_driver and then leases it to the new caller.
//
// Ordering that keeps this crash-safe: the lease record is written (and fsync'ed) before the VF
// is touched, so a holder that dies mid-bind still leaves what is needed to restore it; an empty
// file with a free lock comes from a holder that died before writing, when the VF was untouched.
// release() unlinks the file while still holding the lock; allocators re-check after flock that
// the path still names the inode they locked, so nobody ends up holding a lock on a dead file.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"
#include "iovirt/sriov/sriov.hpp"
#include "iovirt/sriov/vf_net.hpp"

namespace iovirt::sriov {

struct LeaseRecord {
  pid_t pid = 0;
  std::string vm;
  std::optional<PciAddress> vf;
  std::optional<PciAddress> pf;
  std::optional<std::string> restore_driver;
  std::int64_t since = 0;  // unix seconds
  // VF network settings to put back on release or reclaim (format_vf_settings text), on VF
  // net_index of PF netdev net_dev; empty when the holder changed none.
  std::string net_dev;
  unsigned net_index = 0;
  std::string net_restore;

  [[nodiscard]] std::string serialize() const;
  // Tolerant: unknown keys are ignored, missing ones stay default; malformed values are errors.
  static Result<LeaseRecord> parse(std::string_view text);
};

// A held lease. Move-only; destroying it without release() closes the fd, which leaves the lease
// stale (the VF stays on vfio-pci until the next allocation reclaims it) -- the same state a
// crashed holder leaves.
class Lease {
 public:
  Lease() = default;
  Lease(Lease&&) noexcept = default;
  Lease& operator=(Lease&&) noexcept = default;

  [[nodiscard]] const LeaseRecord& record() const { return record_; }
  [[nodiscard]] PciAddress vf() const { return *record_.vf; }
  [[nodiscard]] const std::filesystem::path& file() const { return file_; }
  [[nodiscard]] bool held() const { return fd_.valid(); }

 private:
  friend class VfPool;
  Fd fd_;
  std::filesystem::path file_;
  LeaseRecord record_;
};

struct LeaseStatus {
  std::filesystem::path file;
  LeaseRecord record;  // as read; empty fields when the file is empty
  bool alive = false;  // a process holds the lock
};

class VfPool {
 public:
  explicit VfPool(Sriov& sriov, std::filesystem::path dir = "/run/iovirt/sriov");

  // Takes the first enabled VF of pf that no live process holds (reclaiming a stale lease on
  // the way), records it, binds it to vfio-pci. VFs bound to vfio-pci without a lease file are
  // skipped: something outside iovirt uses them.
  Result<Lease> allocate(const PciAddress& pf, std::string_view vm_name);
  // Resets the VF, binds it back to the recorded driver, removes the lease file, drops the lock.
  Status release(Lease&& lease);
  // Rewrites the held lease's record (fsync'ed), e.g. to add the network settings to restore
  // before changing them, so a reclaim after a crash can put them back.
  Status update(Lease& lease, const LeaseRecord& rec);
  // Where give-back puts recorded network settings back (release and reclaim); without one,
  // they are left as they are (with a warning when the record has some).
  void set_net_config(VfNetConfig* net) { net_ = net; }
  // Every lease file, with whether its holder is alive (lock held) or it is stale.
  Result<std::vector<LeaseStatus>> list_leases() const;

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }

 private:
  Status ensure_dir() const;
  // Reset + restore for a VF whose lease we now hold.
  Status give_back(const PciAddress& vf, const LeaseRecord& rec);

  Sriov& sriov_;
  std::filesystem::path dir_;
  VfNetConfig* net_ = nullptr;
};

}  // namespace iovirt::sriov
