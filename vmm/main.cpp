// iovirt: a KVM VMM whose product is the I/O path. `iovirt run --kernel ...` boots a guest;
// `iovirt sriov ...` manages SR-IOV VFs and iovirt's VF pool.
#include <cstdio>
#include <string>
#include <vector>

#include "iovirt/core/log.hpp"
#include "iovirt/vmm/config.hpp"
#include "iovirt/vmm/sriov_cli.hpp"
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
  auto vm = iovirt::Vm::create(parsed->vm);
  if (!vm) {
    std::fprintf(stderr, "iovirt: %s\n", vm.error().message().c_str());
    return 1;
  }
  return (*vm)->run();
}
