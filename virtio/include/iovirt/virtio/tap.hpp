// Linux tap devices (Documentation/networking/tuntap.rst) as the virtio-net backend: opened with
// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so every frame carries the 12-byte virtio_net_hdr_v1 in
// front and the kernel does the checksum/GSO work the header asks for.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"

namespace iovirt::virtio::tap {

// Opens `name` with `queues` queue fds (IFF_MULTI_QUEUE when queues > 1), each non-blocking and
// with a vnet header of 12 bytes. The tap is created if it does not exist and the caller may
// (root); errors name the tap and say what to do.
[[nodiscard]] Result<std::vector<Fd>> open(const std::string& name, uint16_t queues);

// TUN_F_* offloads this kernel's tap accepts (probed with TUNSETOFFLOAD, then cleared).
[[nodiscard]] unsigned probe_offloads(int fd);
// TUNSETOFFLOAD: the offloads the guest can take on receive (TUN_F_CSUM, TSO4/6, ECN, UFO).
[[nodiscard]] Status set_offload(int fd, unsigned flags);
// TUNSETQUEUE: attach (enable) or detach one queue of a multi-queue tap.
[[nodiscard]] Status set_queue_enabled(int fd, bool enabled);

}  // namespace iovirt::virtio::tap
