// The DPDK port in a build without DPDK (libdpdk-dev was absent when CMake ran): the factory
// says so, so `--backend dpdk=` fails with a line that names the fix.
#include "iovirt/virtio/dpdk_port.hpp"

namespace iovirt::virtio {

bool dpdk_available() {
  return false;
}

bool dpdk_eal_initialised() {
  return false;
}

Result<PacketPortFactory> make_dpdk_port_factory(const std::string& /*spec*/,
                                                 uint16_t /*max_pairs*/,
                                                 std::shared_ptr<DpdkPortStats> /*stats*/) {
  return fail("this build has no DPDK (install libdpdk-dev)");
}

}  // namespace iovirt::virtio
