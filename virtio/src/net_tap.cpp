// Tap devices for virtio-net (Documentation/networking/tuntap.rst).
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/tap.hpp"

namespace iovirt::virtio::tap {

namespace {

std::string hint(const std::string& name, int err) {
  if (err == EPERM || err == EACCES) {
    std::string h =
        " (open it as root or with CAP_NET_ADMIN, or create it for this user with `ip tuntap add "
        "dev ";
    h += name;
    h += " mode tap user $USER";
    h += "`)";
    return h;
  }
  if (err == EINVAL || err == EBUSY) {
    std::string h = " (is '";
    h += name;
    h += "' a tun device, or a tap with other flags/queues than iovirt needs? delete it with `ip "
         "link del ";
    h += name;
    h += "` and let iovirt create it, or `ip tuntap add dev ";
    h += name;
    h += " mode tap multi_queue vnet_hdr`)";
    return h;
  }
  if (err == ENOENT || err == ENODEV) return " (load the tun module: `modprobe tun`)";
  return "";
}

}  // namespace

Result<std::vector<Fd>> open(const std::string& name, uint16_t queues) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return fail("tap '" + name + "': the interface name must have 1 to " +
                    std::to_string(IFNAMSIZ - 1) + " characters",
                EINVAL);
  }
  if (queues == 0) return fail("tap '" + name + "': at least one queue is needed", EINVAL);
  std::vector<Fd> fds;
  fds.reserve(queues);
  for (uint16_t q = 0; q < queues; ++q) {
    Fd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!fd) {
      const int e = errno;
      return fail("tap '" + name + "': open /dev/net/tun" + hint(name, e), e);
    }
    ifreq ifr{};
    std::memcpy(ifr.ifr_name, name.data(), name.size());
    ifr.ifr_flags =
        static_cast<short>(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (queues > 1 ? IFF_MULTI_QUEUE : 0));
    if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) {
      const int e = errno;
      return fail("tap '" + name + "': TUNSETIFF queue " + std::to_string(q) + hint(name, e), e);
    }
    // virtio_net_hdr_v1 with num_buffers: the layout VERSION_1 always uses (section 5.1.6).
    int hdr = static_cast<int>(kNetHdrSize);
    if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &hdr) < 0) {
      const int e = errno;
      return fail("tap '" + name + "': TUNSETVNETHDRSZ 12", e);
    }
    fds.push_back(std::move(fd));
  }
  return fds;
}

unsigned probe_offloads(int fd) {
  unsigned ok = 0;
  // TSO and UFO are only accepted together with CSUM.
  const unsigned candidates[] = {TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO};
  for (unsigned c : candidates) {
    unsigned long arg = TUN_F_CSUM | c;
    if (c == TUN_F_TSO_ECN) arg |= TUN_F_TSO4;
    if (::ioctl(fd, TUNSETOFFLOAD, arg) == 0) ok |= c;
  }
  (void)::ioctl(fd, TUNSETOFFLOAD, 0ul);
  return ok;
}

Status set_offload(int fd, unsigned flags) {
  if (::ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0) {
    return fail_errno("tap: TUNSETOFFLOAD " + std::to_string(flags));
  }
  return {};
}

Status set_queue_enabled(int fd, bool enabled) {
  ifreq ifr{};
  ifr.ifr_flags = static_cast<short>(enabled ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE);
  if (::ioctl(fd, TUNSETQUEUE, &ifr) < 0) {
    return fail_errno(std::string("tap: TUNSETQUEUE ") + (enabled ? "attach" : "detach"));
  }
  return {};
}

}  // namespace iovirt::virtio::tap
