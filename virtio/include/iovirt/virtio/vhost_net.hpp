// Kernel vhost-net (drivers/vhost/net.c) as the virtio-net data path: iovirt hands the kernel
// the guest memory map, each ring's userspace addresses, the kick eventfd (the transport's KVM
// ioeventfd) and the call eventfd (the MSI-X vector's KVM irqfd), and the tap fd; frames then
// move between guest and tap without any iovirt thread. One /dev/vhost-net fd serves one queue
// pair (its vring 0 = rx, vring 1 = tx).
//
// uAPI layouts: <linux/vhost_types.h> (linux-libc-dev 6.1) declares vhost_memory::regions as a
// flexible array; g++ accepts it but iovirt does not rely on a compiler's view of such structs
// for ioctl numbers (see core/kvm_uapi.hpp for the C++ size trap with __DECLARE_FLEX_ARRAY). The
// structs are spelled out here with their C layout and the ioctl numbers are checked against the
// kernel's values.
#pragma once

#include <sys/ioctl.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/fd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/device.hpp"

namespace iovirt::virtio::vhost {

struct MemoryHeader {  // struct vhost_memory without regions[]
  uint32_t nregions;
  uint32_t padding;
};
struct MemoryRegion {  // struct vhost_memory_region
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t flags_padding;
};
struct VringState {  // struct vhost_vring_state
  uint32_t index;
  uint32_t num;
};
struct VringFile {  // struct vhost_vring_file
  uint32_t index;
  int32_t fd;  // -1 unbinds
};
struct VringAddr {  // struct vhost_vring_addr (note the order: desc, used, avail)
  uint32_t index;
  uint32_t flags;
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};
static_assert(sizeof(MemoryHeader) == 8 && sizeof(MemoryRegion) == 32 && sizeof(VringState) == 8 &&
              sizeof(VringFile) == 8 && sizeof(VringAddr) == 40);

inline constexpr unsigned kVhostVirtio = 0xAF;
inline constexpr unsigned long kGetFeatures = _IOR(kVhostVirtio, 0x00, uint64_t);
inline constexpr unsigned long kSetFeatures = _IOW(kVhostVirtio, 0x00, uint64_t);
inline constexpr unsigned long kSetOwner = _IO(kVhostVirtio, 0x01);
inline constexpr unsigned long kSetMemTable = _IOW(kVhostVirtio, 0x03, MemoryHeader);
inline constexpr unsigned long kSetVringNum = _IOW(kVhostVirtio, 0x10, VringState);
inline constexpr unsigned long kSetVringAddr = _IOW(kVhostVirtio, 0x11, VringAddr);
inline constexpr unsigned long kSetVringBase = _IOW(kVhostVirtio, 0x12, VringState);
inline constexpr unsigned long kGetVringBase = _IOWR(kVhostVirtio, 0x12, VringState);
inline constexpr unsigned long kSetVringKick = _IOW(kVhostVirtio, 0x20, VringFile);
inline constexpr unsigned long kSetVringCall = _IOW(kVhostVirtio, 0x21, VringFile);
inline constexpr unsigned long kNetSetBackend = _IOW(kVhostVirtio, 0x30, VringFile);
// The values the kernel defines (x86-64): a different struct size would change them.
static_assert(kGetFeatures == 0x8008af00ul && kSetFeatures == 0x4008af00ul &&
              kSetOwner == 0xaf01ul);
static_assert(kSetMemTable == 0x4008af03ul);
static_assert(kSetVringNum == 0x4008af10ul && kSetVringAddr == 0x4028af11ul &&
              kSetVringBase == 0x4008af12ul && kGetVringBase == 0xc008af12ul);
static_assert(kSetVringKick == 0x4008af20ul && kSetVringCall == 0x4008af21ul &&
              kNetSetBackend == 0x4008af30ul);

// The ring-level bits vhost-net may serve; everything else of virtio-net (MAC, STATUS, CTRL_VQ,
// MQ, offloads) is iovirt's or the tap's business.
[[nodiscard]] uint64_t ring_feature_mask();
// What VirtioNet offers with vhost=on: `device` minus the ring-level bits the kernel lacks.
[[nodiscard]] uint64_t intersect_features(uint64_t device, uint64_t kernel);

// The VHOST_SET_MEM_TABLE payload (header + regions) for this guest memory, 8-byte aligned.
[[nodiscard]] std::vector<uint64_t> build_mem_table(const GuestMemory& mem);

struct RingUserAddrs {
  uint64_t desc;
  uint64_t avail;
  uint64_t used;
};
// Translates a queue's ring gpas to this process's addresses, each whole area inside one region.
[[nodiscard]] Result<RingUserAddrs> ring_user_addrs(const GuestMemory& mem, const Virtqueue& q);

// Opens /dev/vhost-net (VHOST_SET_OWNER done). `path` is for tests.
[[nodiscard]] Result<Fd> open_device(const char* path = "/dev/vhost-net");
[[nodiscard]] Result<uint64_t> get_features(int fd);

struct PairSetup {
  int tap_fd;
  QueueBinding rx;
  QueueBinding tx;
};

// Programs one vhost-net device per queue pair at activate(); owns the fds and the optional
// fallback thread for queues without an irqfd. stop() detaches the tap and closes everything.
class VhostNetBackend final {
 public:
  static Result<std::unique_ptr<VhostNetBackend>> start(const ActivateContext& ctx,
                                                        std::span<const PairSetup> pairs,
                                                        std::string name);
  ~VhostNetBackend();
  VhostNetBackend(const VhostNetBackend&) = delete;
  VhostNetBackend& operator=(const VhostNetBackend&) = delete;
  void stop();

 private:
  VhostNetBackend() = default;
  Status setup_ring(int fd, uint32_t vring, const ActivateContext& ctx, const QueueBinding& b);
  void fallback_loop();

  struct Fallback {
    uint16_t queue;
    EventFd call;
  };
  std::string name_;
  std::vector<Fd> devs_;
  std::vector<Fallback> fallbacks_;
  VirtioInterrupt* irq_ = nullptr;
  std::function<void(const std::string&)> fail_;  // ActivateContext::fail
  std::optional<EventFd> stop_;
  std::thread thread_;
};

}  // namespace iovirt::virtio::vhost
