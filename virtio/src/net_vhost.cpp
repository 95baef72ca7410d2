// Kernel vhost-net programming (drivers/vhost/vhost.c, net.c; <linux/vhost.h>).
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "iovirt/core/log.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_net.hpp"

namespace iovirt::virtio::vhost {

uint64_t ring_feature_mask() {
  return feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) |
         feature_bit(VIRTIO_F_INDIRECT_DESC) | feature_bit(VIRTIO_F_RING_PACKED) |
         feature_bit(VIRTIO_F_IN_ORDER) | feature_bit(net_feature::kMrgRxbuf);
}

uint64_t intersect_features(uint64_t device, uint64_t kernel) {
  const uint64_t ring = ring_feature_mask();
  // RING_PACKED and IN_ORDER stay out even where the kernel offers them: setup_ring() programs
  // split rings only.
  const uint64_t unprogrammed = feature_bit(VIRTIO_F_RING_PACKED) | feature_bit(VIRTIO_F_IN_ORDER);
  return ((device & ~ring) | (device & ring & kernel)) & ~unprogrammed;
}

std::vector<uint64_t> build_mem_table(const GuestMemory& mem) {
  const auto regions = mem.regions();
  std::vector<uint64_t> buf((sizeof(MemoryHeader) + regions.size() * sizeof(MemoryRegion)) / 8);
  MemoryHeader h{static_cast<uint32_t>(regions.size()), 0};
  std::memcpy(buf.data(), &h, sizeof h);
  auto* out = reinterpret_cast<uint8_t*>(buf.data()) + sizeof h;
  for (const GuestRegion& r : regions) {
    const MemoryRegion m{r.gpa, r.size, reinterpret_cast<uint64_t>(r.host), 0};
    std::memcpy(out, &m, sizeof m);
    out += sizeof m;
  }
  return buf;
}

namespace {

Result<uint64_t> user_addr(const GuestMemory& mem, uint64_t gpa, uint64_t len, const char* what) {
  const GuestRegion* r = mem.find_region(gpa);
  if (r == nullptr || len > r->size || gpa - r->gpa > r->size - len) {
    return fail(std::string("vhost-net: the ") + what + " area [" + std::to_string(gpa) + ", +" +
                    std::to_string(len) + ") is not inside one guest memory region",
                EFAULT);
  }
  return reinterpret_cast<uint64_t>(r->host) + (gpa - r->gpa);
}

Status xioctl(int fd, unsigned long req, const void* arg, const std::string& what) {
  if (::ioctl(fd, req, arg) < 0) return fail_errno("vhost-net: " + what);
  return {};
}

}  // namespace

Result<RingUserAddrs> ring_user_addrs(const GuestMemory& mem, const Virtqueue& q) {
  const uint32_t n = q.size();
  // A packed ring's driver and device areas are the 4-byte event suppression structures.
  const bool packed = q.format() == RingFormat::Packed;
  auto d = user_addr(mem, q.desc_area(), desc_area_bytes(n), "descriptor table");
  if (!d) return std::unexpected(std::move(d.error()));
  auto a = user_addr(mem, q.driver_area(), packed ? event_area_bytes() : avail_area_bytes(n),
                     packed ? "driver event suppression" : "avail ring");
  if (!a) return std::unexpected(std::move(a.error()));
  auto u = user_addr(mem, q.device_area(), packed ? event_area_bytes() : used_area_bytes(n),
                     packed ? "device event suppression" : "used ring");
  if (!u) return std::unexpected(std::move(u.error()));
  return RingUserAddrs{*d, *a, *u};
}

Result<Fd> open_device(const char* path) {
  Fd fd(::open(path, O_RDWR | O_CLOEXEC));
  if (!fd) {
    const int e = errno;
    std::string msg = std::string("vhost-net: open ") + path;
    if (e == ENOENT || e == ENODEV) {
      msg += " (load the module with `modprobe vhost_net`, or use vhost=off)";
    } else if (e == EACCES || e == EPERM) {
      msg += " (run as root or give this user access to it, or use vhost=off)";
    }
    return fail(msg, e);
  }
  if (::ioctl(fd.get(), kSetOwner) < 0)
    return fail_errno(std::string("vhost-net: VHOST_SET_OWNER"));
  return fd;
}

Result<uint64_t> get_features(int fd) {
  uint64_t f = 0;
  if (::ioctl(fd, kGetFeatures, &f) < 0) return fail_errno("vhost-net: VHOST_GET_FEATURES");
  return f;
}

Status VhostNetBackend::setup_ring(int fd, uint32_t vring, const ActivateContext& ctx,
                                   const QueueBinding& b) {
  const std::string q = "queue " + std::to_string(b.index);
  if (b.queue->format() != RingFormat::Split) {
    return fail("vhost-net: " + q + ": only the split ring is programmed", ENOTSUP);
  }
  if (auto st = b.queue->validate(*ctx.mem); !st) {
    return std::unexpected(std::move(st.error()).context("vhost-net: " + q));
  }
  auto addrs = ring_user_addrs(*ctx.mem, *b.queue);
  if (!addrs) return std::unexpected(std::move(addrs.error()).context(q));
  const VringState num{vring, b.queue->size()};
  if (auto st = xioctl(fd, kSetVringNum, &num, q + ": VHOST_SET_VRING_NUM"); !st) return st;
  const VringState base{vring, b.queue->next_avail()};
  if (auto st = xioctl(fd, kSetVringBase, &base, q + ": VHOST_SET_VRING_BASE"); !st) return st;
  const VringAddr addr{vring, 0, addrs->desc, addrs->used, addrs->avail, 0};
  if (auto st = xioctl(fd, kSetVringAddr, &addr, q + ": VHOST_SET_VRING_ADDR"); !st) return st;
  const VringFile kick{vring, b.kick_fd};
  if (auto st = xioctl(fd, kSetVringKick, &kick, q + ": VHOST_SET_VRING_KICK"); !st) return st;
  int call = ctx.irq->queue_irqfd(b.index);
  if (call < 0) {
    // No irqfd for this queue's vector: the kernel signals an eventfd of ours and a thread turns
    // that into notify_queue().
    auto ev = EventFd::create();
    if (!ev) return std::unexpected(std::move(ev.error()).context("vhost-net: call eventfd"));
    call = ev->fd();
    fallbacks_.push_back(Fallback{b.index, std::move(*ev)});
  }
  const VringFile callf{vring, call};
  return xioctl(fd, kSetVringCall, &callf, q + ": VHOST_SET_VRING_CALL");
}

Result<std::unique_ptr<VhostNetBackend>> VhostNetBackend::start(const ActivateContext& ctx,
                                                                std::span<const PairSetup> pairs,
                                                                std::string name) {
  std::unique_ptr<VhostNetBackend> b(new VhostNetBackend());
  b->name_ = std::move(name);
  b->irq_ = ctx.irq;
  b->fail_ = ctx.fail;
  const uint64_t want = ctx.features & ring_feature_mask();
  const auto table = build_mem_table(*ctx.mem);
  for (const PairSetup& p : pairs) {
    auto fd = open_device();
    if (!fd) return std::unexpected(std::move(fd.error()));
    if (auto st = xioctl(fd->get(), kSetFeatures, &want, "VHOST_SET_FEATURES"); !st) {
      return std::unexpected(st.error());
    }
    if (auto st = xioctl(fd->get(), kSetMemTable, table.data(), "VHOST_SET_MEM_TABLE"); !st) {
      return std::unexpected(st.error());
    }
    b->devs_.push_back(std::move(*fd));
    const int dev = b->devs_.back().get();
    if (auto st = b->setup_ring(dev, 0, ctx, p.rx); !st) return std::unexpected(st.error());
    if (auto st = b->setup_ring(dev, 1, ctx, p.tx); !st) return std::unexpected(st.error());
    for (uint32_t v = 0; v < 2; ++v) {
      const VringFile backend{v, p.tap_fd};
      if (auto st = xioctl(dev, kNetSetBackend, &backend, "VHOST_NET_SET_BACKEND"); !st) {
        return std::unexpected(st.error());
      }
    }
  }
  if (!b->fallbacks_.empty()) {
    auto stop = EventFd::create();
    if (!stop) return std::unexpected(std::move(stop.error()));
    b->stop_ = std::move(*stop);
    b->thread_ = std::thread([raw = b.get()] { raw->fallback_loop(); });
  }
  return b;
}

void VhostNetBackend::fallback_loop() {
  std::vector<pollfd> pfds;
  pfds.push_back(pollfd{stop_->fd(), POLLIN, 0});
  for (const Fallback& f : fallbacks_) pfds.push_back(pollfd{f.call.fd(), POLLIN, 0});
  for (;;) {
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      fail_(std::string("vhost-net call poll: ") + std::strerror(errno));
      return;
    }
    if (pfds[0].revents != 0) return;
    for (size_t i = 1; i < pfds.size(); ++i) {
      if (pfds[i].revents == 0) continue;
      auto v = fallbacks_[i - 1].call.read();
      if (v && *v != 0) irq_->notify_queue(fallbacks_[i - 1].queue);
    }
  }
}

void VhostNetBackend::stop() {
  for (Fd& d : devs_) {
    for (uint32_t v = 0; v < 2; ++v) {
      const VringFile none{v, -1};
      (void)::ioctl(d.get(), kNetSetBackend, &none);
      VringState st{v, 0};
      (void)::ioctl(d.get(), kGetVringBase, &st);
    }
  }
  devs_.clear();
  if (thread_.joinable()) {
    (void)stop_->write();
    thread_.join();
  }
  fallbacks_.clear();
}

VhostNetBackend::~VhostNetBackend() {
  stop();
}

}  // namespace iovirt::virtio::vhost
