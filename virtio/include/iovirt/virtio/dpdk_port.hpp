// A DPDK ethdev port as the PacketPort of `iovirt-vhost net --backend dpdk=SPEC`: each virtio-net
// queue pair is one rx and one tx queue of the port (a NIC PMD, or net_tap / net_ring / net_null
// for tests), and frames live in single-segment mbufs of one mempool.
//
// SPEC syntax (what follows `dpdk=`):
//
//     <EAL arguments, space separated>[;port=<id|name>][;rxd=<n>][;txd=<n>]
//
//   e.g.  "-l 0 --no-huge -m 256 --no-pci --no-shconf --vdev=net_ring0;port=net_ring0"
//         "-l 0 --in-memory -m 256 --no-pci --vdev=net_ring0"   (hugepages; the only port)
//         "-l 0 --vdev=net_tap0,iface=dtap0;port=0"
//         "-l 0 -a 0000:03:00.0;port=0"          (a NIC bound to vfio-pci, hugepages reserved)
//
//   - EAL arguments are split on spaces (no quoting: an argument cannot contain a space or ';').
//     The EAL is initialised once per process (it cannot be initialised twice): a later SPEC in
//     the same process reuses it; its `--vdev` devices that do not exist yet are hot-plugged and
//     its other EAL arguments are ignored (with a warning when they differ from the first's).
//   - port: the ethdev port id or its device name (net_ring0, 0000:03:00.0); optional when the
//     EAL found exactly one port.
//   - rxd / txd: descriptors per rx / tx queue (default 1024, rounded by the driver's limits).
//   Memory: with hugepages reserved (echo 1024 > /proc/sys/vm/nr_hugepages) use
//   `--in-memory -m MiB` (nothing left in /var/run/dpdk, several daemons side by side); without
//   hugepages use `--no-huge -m MiB --no-shconf` (the EAL rejects --in-memory with --no-huge).
//   With neither, the EAL's shared config in /var/run/dpdk/rte lets one such process run at a
//   time (give each its own --file-prefix). `-l CPU` keeps the EAL from starting an idle lcore
//   thread per CPU; the caller's CPU affinity is restored after rte_eal_init.
//   The EAL lives until the process exits (rte_eal_cleanup is never called).
//
// Multi-segment frames (a PMD scattering a frame larger than one mbuf, which this port never asks
// for: MTU stays the default and rx scatter is off) are dropped on receive and counted
// (rx_multiseg_dropped), never linearised.
//
// The workers calling a port are not EAL lcores: each registers itself (rte_thread_register) on
// first use so the mempool's per-lcore cache works, and unregisters when it exits. If registering
// fails (no free lcore id) the thread goes on without a cache (slower, still correct; logged once).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "iovirt/core/error.hpp"
#include "iovirt/virtio/packet_port.hpp"

namespace iovirt::virtio {

// Totals over every queue pair of one factory's ports; updated once per burst (relaxed).
struct DpdkPortStats {
  std::atomic<uint64_t> tx_frames{0};   // handed to rte_eth_tx_burst and accepted
  std::atomic<uint64_t> tx_dropped{0};  // the tx queue was full
  std::atomic<uint64_t> tx_bad_len{0};  // len 0 or above max_frame(): freed, not sent
  std::atomic<uint64_t> rx_frames{0};   // handed to the device
  std::atomic<uint64_t> rx_multiseg_dropped{0};
  std::atomic<uint64_t> alloc_failed{0};  // buffers asked for but the mempool was empty
};

// False when this build has no DPDK (libdpdk-dev was absent at configure time); then
// make_dpdk_port_factory() fails with "this build has no DPDK (install libdpdk-dev)".
[[nodiscard]] bool dpdk_available();

// Whether this process's EAL is up (a factory was made); for tests and diagnostics.
[[nodiscard]] bool dpdk_eal_initialised();

// Initialises the EAL (once per process), finds the port and creates the mempool for up to
// `max_pairs` queue pairs (iovirt-vhost's --queues). Fails with one line naming what is wrong:
// bad EAL arguments, no such port, a port with fewer queues than max_pairs, no memory for the
// mempool. The returned factory configures and starts the port when the first pair of an
// activation asks for its port (with `pairs` queues, at most max_pairs) and stops it when the
// last port of the activation is destroyed, so a device reset and re-activation (a reconnecting
// front-end) reconfigures it. Factories for the same port share it.
Result<PacketPortFactory> make_dpdk_port_factory(const std::string& spec, uint16_t max_pairs = 1,
                                                 std::shared_ptr<DpdkPortStats> stats = {});

}  // namespace iovirt::virtio
