// iovirt: a KVM VMM whose product is the I/O path. `iovirt run --kernel ...` boots a guest;
// `iovirt sriov ...` manages SR-IOV VFs and iovirt's VF pool.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "iovirt/core/log.hpp"
#include "iovirt/vmm/config.hpp"
#include "iovirt/vmm/sriov_cli.hpp"
#include "iovirt/vmm/vf_assign.hpp"
#include "iovirt/vmm/vm.hpp"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto parsed = iovirt::parse_args(args);
  if (!parsed) {
    std::fprintf(stderr, "iovirt: %s\n", parsed.error().message().c_str());
    return 2;
  }
  switch (parsed->command) {
    case iovirt::Command::Help:
      std::fputs(iovirt::usage().c_str(), stdout);
      return 0;
    case iovirt::Command::Version:
      std::puts("iovirt " IOVIRT_VERSION);
      return 0;
    case iovirt::Command::Sriov: {
      std::string out, err;
      int rc = iovirt::run_sriov(parsed->sriov, iovirt::SriovCliEnv::from_environment(), out, err);
      std::fputs(out.c_str(), stdout);
      if (rc != 0) std::fprintf(stderr, "iovirt: %s\n", err.c_str());
      return rc;
    }
    case iovirt::Command::Run:
      break;
  }
  // --vf: VFs leased from the pool become --device entries; vfs gives them back when it goes,
  // after the VM (declared later, destroyed first) has closed their VFIO devices.
  std::unique_ptr<iovirt::VfAssignments> vfs;
  if (!parsed->vm.vfs.empty()) {
    auto a = iovirt::VfAssignments::acquire(parsed->vm, "iovirt-" + std::to_string(::getpid()),
                                            iovirt::SriovCliEnv::from_environment());
    if (!a) {
      std::fprintf(stderr, "iovirt: %s\n", a.error().message().c_str());
      return 1;
    }
    vfs = std::move(*a);
  }
  auto vm = iovirt::Vm::create(parsed->vm);
  if (!vm) {
    std::fprintf(stderr, "iovirt: %s\n", vm.error().message().c_str());
    return 1;
  }
  if (vfs && !parsed->vm.metrics.empty()) vfs->publish_metrics((*vm)->metrics());
  const int rc = (*vm)->run();
  vm->reset();
  if (vfs) {
    if (auto s = vfs->release(); !s)
      std::fprintf(stderr, "iovirt: giving back VFs: %s\n", s.error().message().c_str());
  }
  return rc;
}
