// What `iovirt run` was asked to build, parsed from the command line.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/sysfs.hpp"
#include "iovirt/sriov/vf_net.hpp"

namespace iovirt {

// Virtqueue options shared by every virtio device option.
struct RingOptions {
  bool packed = false;     // offer VIRTIO_F_RING_PACKED (packed=on)
  bool event_idx = true;   // offer VIRTIO_F_EVENT_IDX (event_idx=off hides it)
  bool indirect = true;    // offer VIRTIO_F_INDIRECT_DESC
  uint16_t queue_size = 256;
};

// --disk path=FILE[,readonly=on][,direct=on][,queues=N][,serial=S][,packed=on][,event_idx=off]...
// --disk vhost-user=SOCKET[,queues=N]: the rings served by a vhost-user back-end process.
struct DiskOption {
  std::string path;
  std::string vhost_user;  // back-end socket; path/readonly/direct/serial then do not apply
  bool readonly = false;
  bool direct = false;
  uint16_t queues = 1;
  std::string serial;
  std::string io = "auto";  // virtio::BlkConfig::io: auto, io_uring, sync
  RingOptions ring;
};

// --net tap=NAME[,mac=52:54:00:..][,queues=N][,vhost=on][,packed=on][,event_idx=off]...
// --net vhost-user=SOCKET[,mac=..]: the rings served by a vhost-user back-end (DPDK, iovirt-vhost).
struct NetOption {
  std::string tap;
  std::string vhost_user;
  std::optional<std::array<uint8_t, 6>> mac;
  uint16_t queues = 1;  // queue pairs
  bool vhost = false;
  RingOptions ring;
};

// --device path=/sys/bus/pci/devices/DDDD:BB:DD.F: a host PCI function passed through with VFIO
// (Cloud Hypervisor's syntax). The path's last component is the function's address.
struct DeviceOption {
  std::string path;
  PciAddress address;
};

// --vf pf=DDDD:BB:DD.F[,mac=..][,vlan=..][,qos=..][,spoofchk=..][,trust=..][,state=..][,..tx_rate=..]:
// a VF of that PF taken from iovirt's VF pool (sriov/pool.hpp), given those network settings when
// the PF has a netdev, bound to vfio-pci and passed through; returned to the pool on exit.
struct VfOption {
  PciAddress pf;
  sriov::VfNetSettings net;
};

struct VmConfig {
  std::string kernel;
  std::string initrd;
  std::string cmdline = "console=ttyS0 reboot=acpi panic=-1";
  uint32_t cpus = 1;
  uint64_t memory = 512ull << 20;
  std::string metrics;  // HOST:PORT, empty = off
  bool hugepages = false;
  std::vector<DiskOption> disks;
  std::vector<NetOption> nets;
  std::vector<DeviceOption> devices;
  std::vector<VfOption> vfs;
};

enum class Command { Run, Sriov, Help, Version };

// iovirt sriov [--json] list | enable PF N | disable PF | bind VF vfio|host
//                       | config VF [KEY=VALUE,...] | leases
enum class SriovCommand { List, Enable, Disable, Bind, Config, Leases };
struct SriovArgs {
  SriovCommand command = SriovCommand::List;
  bool json = false;
  PciAddress device;             // enable/disable: the PF; bind: the VF
  unsigned count = 0;            // enable: number of VFs (>= 1)
  bool to_vfio = true;           // bind: vfio (true) or host (false)
  sriov::VfTarget target;        // config: DDDD:BB:DD.F or PF-NETDEV:vfN
  sriov::VfNetSettings settings; // config: what to set; empty = show the current settings
};

struct ParsedArgs {
  Command command = Command::Help;
  VmConfig vm;       // Command::Run
  SriovArgs sriov;   // Command::Sriov
};

// A decimal unsigned 32-bit value; the error names `opt`. Shared by every iovirt command line.
Result<uint32_t> parse_u32(const std::string& opt, const std::string& v);
// --metrics HOST:PORT: a non-empty host and a port in 0..65535.
Status check_host_port(const std::string& v);
// "52:54:00:12:34:56" -> bytes; unicast only. `what` leads the error ("--net: mac=").
Result<std::array<uint8_t, 6>> parse_mac(const std::string& what, const std::string& v);

// "512M", "2G", "1048576", "64k" -> bytes. Refuses garbage, zero and overflow.
Result<uint64_t> parse_size(const std::string& s);

// Parses argv (without argv[0]). Errors are one line naming the option and the problem.
// Checks only what needs no system access; limits that depend on the host (KVM's vCPU limit,
// host RAM) are checked when the VM is built.
Result<ParsedArgs> parse_args(const std::vector<std::string>& args);

// The value of one --disk / --net option (without the option name).
Result<DiskOption> parse_disk(const std::string& value);
Result<NetOption> parse_net(const std::string& value);
Result<DeviceOption> parse_device(const std::string& value);
Result<VfOption> parse_vf(const std::string& value);
// The arguments after `iovirt sriov`.
Result<SriovArgs> parse_sriov_args(const std::vector<std::string>& args);

std::string usage();

inline constexpr uint64_t kMinMemory = 64ull << 20;
inline constexpr uint64_t kMaxMemory = 1ull << 40;  // 1 TiB: fits the 39-bit guest physical map
inline constexpr uint32_t kMaxCpus = 255;            // xAPIC ids in the MADT
inline constexpr uint16_t kMaxDeviceQueues = 64;     // per --disk (queues) / --net (pairs)

}  // namespace iovirt
