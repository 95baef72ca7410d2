#include "iovirt/virtio/vhost_user/frontend.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "iovirt/core/log.hpp"
#include "iovirt/virtio/blk_request.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_net.hpp"
#include "net_backend.hpp"

namespace iovirt::virtio::vhost_user {

namespace {

constexpr uint32_t kNetConfigBytes = 12;  // mac[6], status, max_virtqueue_pairs, mtu
constexpr uint16_t kMaxQueues = 64;       // blk request queues / net queue pairs

Result<Connection> dial(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path))
    return fail("vhost-user socket path '" + path + "' is empty or longer than " +
                    std::to_string(sizeof(addr.sun_path) - 1) + " bytes",
                ENAMETOOLONG);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fail_errno("socket(AF_UNIX)");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0)
    return fail_errno("connect to the vhost-user back-end at " + path +
                      " (is it running? start it first, e.g. iovirt-vhost blk --socket " + path +
                      " ...)");
  return Connection(std::move(fd));
}

// What iovirt lets through from a back-end's feature set, per device type. Ring layout bits that
// the transport serves; device bits the driver and back-end can agree on without iovirt in the
// data path. RING_PACKED only where it can be restored (see the header).
uint64_t allowed_features(uint16_t device_id, bool packed) {
  uint64_t f = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) |
               feature_bit(VIRTIO_F_INDIRECT_DESC);
  if (packed) f |= feature_bit(VIRTIO_F_RING_PACKED);
  if (device_id == kDeviceIdNet) {
    using namespace net_feature;
    for (unsigned b : {kCsum, kGuestCsum, kGuestTso4, kGuestTso6, kGuestEcn, kGuestUfo, kHostTso4,
                       kHostTso6, kHostEcn, kHostUfo, kMrgRxbuf})
      f |= feature_bit(b);
  } else if (device_id == kDeviceIdBlock) {
    // size_max 1, seg_max 2, geometry 4, ro 5, blk_size 6, flush 9, topology 10, config_wce 11,
    // mq 12, discard 13, write_zeroes 14.
    for (unsigned b : {1u, 2u, 4u, 5u, 6u, 9u, 10u, 11u, 12u, 13u, 14u}) f |= feature_bit(b);
  }
  return f;
}

constexpr unsigned kBlkFeatureMq = 12;

}  // namespace

Frontend::Frontend(FrontendOptions opt, MetricsRegistry& metrics)
    : opt_(std::move(opt)), metrics_(metrics) {}

Result<std::unique_ptr<Frontend>> Frontend::connect(FrontendOptions opt, MetricsRegistry& metrics) {
  const std::string where = opt.name + " (vhost-user " + opt.socket + ")";
  if (opt.device_id != kDeviceIdBlock && opt.device_id != kDeviceIdNet)
    return fail(where + ": only blk and net devices are supported", EINVAL);
  if (opt.queues == 0 || opt.queues > kMaxQueues)
    return fail(where + ": queues must be 1.." + std::to_string(kMaxQueues), EINVAL);
  std::unique_ptr<Frontend> f(new Frontend(std::move(opt), metrics));
  Labels l{{"device", f->opt_.name}};
  f->reconnect_counter_ = &metrics.counter("iovirt_vhost_user_reconnects_total",
                                           "Reconnections to the vhost-user back-end", l);
  f->connected_gauge_ = &metrics.gauge("iovirt_vhost_user_connected",
                                       "1 while the vhost-user back-end is connected", l);
  IOVIRT_TRY_CTX(conn, dial(f->opt_.socket), where);
  IOVIRT_TRY_CTX(stop, EventFd::create(), where);
  f->stop_.emplace(std::move(stop));
  {
    std::lock_guard lock(f->mu_);
    f->conn_.emplace(std::move(conn));
    IOVIRT_CHECK_CTX(f->handshake(), where);
  }
  f->connected_ = true;
  f->connected_gauge_->set(1);
  log_info(where + ": connected; back-end features " + std::to_string(f->backend_features_) +
           ", protocol features " + std::to_string(f->protocol_) + ", " +
           std::to_string(f->num_queues_) + " queues");
  f->monitor_ = std::thread([raw = f.get()] { raw->monitor_loop(); });
  return f;
}

Frontend::~Frontend() {
  stop_ctrl();
  if (monitor_.joinable()) {
    (void)stop_->write();
    monitor_.join();
  }
}

Status Frontend::send(Message msg) {
  const bool ack = (protocol_ & (1ull << protocol_feature::kReplyAck)) != 0;
  if (ack) msg.flags |= kFlagNeedReply;
  const Request r = msg.request;
  IOVIRT_CHECK_CTX(conn_->send(msg), request_name(static_cast<uint32_t>(r)));
  if (ack) return ack_if_asked(r);
  return {};
}

Status Frontend::ack_if_asked(Request r) {
  auto reply = conn_->receive(Role::Frontend, Limits{});
  const std::string what = request_name(static_cast<uint32_t>(r)) + " acknowledgement";
  if (!reply) return std::unexpected(std::move(reply.error()).context(what));
  if (!*reply) return fail(what + ": the back-end closed the connection", ECONNRESET);
  const auto* v = std::get_if<U64>(&(*reply)->body);
  if ((*reply)->request != r || v == nullptr)
    return fail(what + ": the back-end replied to a different request", EPROTO);
  if (v->value != 0)
    return fail(what + ": the back-end refused it (status " + std::to_string(v->value) + ")", EIO);
  return {};
}

Result<Message> Frontend::request(Request r, Body body) {
  const std::string what = request_name(static_cast<uint32_t>(r));
  IOVIRT_CHECK_CTX(conn_->send(make_request(r, std::move(body))), what);
  auto reply = conn_->receive(Role::Frontend, Limits{});
  if (!reply) return std::unexpected(std::move(reply.error()).context(what + " reply"));
  if (!*reply) return fail(what + ": the back-end closed the connection", ECONNRESET);
  if ((*reply)->request != r || !(*reply)->is_reply())
    return fail(what + ": the back-end replied with " +
                    request_name(static_cast<uint32_t>((*reply)->request)),
                EPROTO);
  return std::move(**reply);
}

Result<uint64_t> Frontend::request_u64(Request r) {
  IOVIRT_TRY_CTX(m, request(r), "");
  const auto* v = std::get_if<U64>(&m.body);
  if (v == nullptr)
    return fail(request_name(static_cast<uint32_t>(r)) + ": reply without a u64 payload", EPROTO);
  return v->value;
}

Status Frontend::handshake() {
  IOVIRT_TRY_CTX(features, request_u64(Request::GetFeatures), "");
  // INFLIGHT_SHMFD so a restarted back-end resubmits exactly what was in flight (a disk
  // completes out of order, so the used index alone cannot say) and so a packed ring can be
  // restored at all; a split-ring NIC does not use it (share_inflight).
  uint64_t proto_wanted = (1ull << protocol_feature::kReplyAck) | (1ull << protocol_feature::kMq) |
                          (1ull << protocol_feature::kInflightShmfd);
  if (opt_.device_id == kDeviceIdBlock) {
    proto_wanted |= (1ull << protocol_feature::kConfig);  // the capacity
  }
  protocol_ = 0;
  if ((features & feature_bit(kFeatureProtocolFeatures)) != 0) {
    IOVIRT_TRY_CTX(proto, request_u64(Request::GetProtocolFeatures), "");
    // Set before SET_PROTOCOL_FEATURES is sent with the old value: that message itself is never
    // acknowledged unless REPLY_ACK was already in force, so send it plainly.
    IOVIRT_CHECK_CTX(conn_->send(make_request(Request::SetProtocolFeatures, U64{proto & proto_wanted})),
                     "SET_PROTOCOL_FEATURES");
    protocol_ = proto & proto_wanted;
  }
  IOVIRT_CHECK_CTX(send(make_request(Request::SetOwner)), "");

  uint16_t backend_queues = 1;
  if ((protocol_ & (1ull << protocol_feature::kMq)) != 0) {
    IOVIRT_TRY_CTX(n, request_u64(Request::GetQueueNum), "");
    backend_queues = static_cast<uint16_t>(std::min<uint64_t>(n, 0xffff));
    if (backend_queues == 0) return fail("GET_QUEUE_NUM: the back-end has no queues", EPROTO);
  }

  const bool inflight = (protocol_ & (1ull << protocol_feature::kInflightShmfd)) != 0;
  const bool packed = opt_.packed && inflight;
  if (opt_.packed && features_ == 0 && (!inflight || !has(features, VIRTIO_F_RING_PACKED)))
    log_warn(opt_.name + ": packed=on, but the back-end does not offer " +
             (inflight ? "VIRTIO_F_RING_PACKED" : "INFLIGHT_SHMFD (to restore a packed ring)") +
             "; the guest gets the split ring");
  uint64_t offered = (features & allowed_features(opt_.device_id, packed));
  if (!has(offered, VIRTIO_F_VERSION_1))
    return fail("the back-end does not offer VIRTIO_F_VERSION_1 (iovirt is modern-only)", ENOTSUP);
  std::vector<uint8_t> config;
  uint16_t queues = opt_.queues;
  if (opt_.device_id == kDeviceIdBlock) {
    if ((protocol_ & (1ull << protocol_feature::kConfig)) == 0)
      return fail("the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG, which vhost-user-blk "
                  "needs for the disk's size",
                  ENOTSUP);
    Config req{0, 0, std::vector<uint8_t>(sizeof(blk::BlkConfigSpace), 0)};
    IOVIRT_TRY_CTX(reply, request(Request::GetConfig, std::move(req)), "");
    const auto* c = std::get_if<Config>(&reply.body);
    if (c == nullptr || c->offset != 0 || c->data.size() != sizeof(blk::BlkConfigSpace))
      return fail("GET_CONFIG: the back-end returned a config of the wrong size", EPROTO);
    config = c->data;
    blk::BlkConfigSpace bc{};
    std::memcpy(&bc, config.data(), sizeof bc);
    uint16_t cfg_queues = has(offered, kBlkFeatureMq) ? bc.num_queues : 1;
    if (cfg_queues == 0) cfg_queues = 1;
    queues = std::min({opt_.queues, cfg_queues, backend_queues});
    if (queues < opt_.queues)
      log_warn(opt_.name + ": the back-end serves " + std::to_string(queues) + " of the " +
               std::to_string(opt_.queues) + " queues asked for");
    if (queues > 1) {
      offered |= feature_bit(kBlkFeatureMq);
    } else {
      offered &= ~feature_bit(kBlkFeatureMq);
    }
    bc.num_queues = queues;
    std::memcpy(config.data(), &bc, sizeof bc);
  } else {
    // GET_QUEUE_NUM counts queue pairs for net (DPDK's and QEMU's reading); a back-end that
    // counts rings only looks larger, which is harmless here.
    const uint16_t pairs = opt_.queues;
    if (backend_queues < pairs)
      return fail("the back-end serves at most " + std::to_string(backend_queues) +
                      " queue pairs; use queues=" + std::to_string(backend_queues),
                  ENOTSUP);
    using namespace net_feature;
    offered |= feature_bit(kMac) | feature_bit(kStatus);
    offered &= ~(feature_bit(kMq) | feature_bit(kCtrlVq));
    queues = 2;
    if (pairs > 1) {
      // The control queue is iovirt's own (section 5.1.6.5): VQ_PAIRS_SET becomes
      // SET_VRING_ENABLE on the pairs' rings, as QEMU does; the back-end never sees it.
      if ((protocol_ & (1ull << protocol_feature::kMq)) == 0)
        return fail("queues=" + std::to_string(pairs) +
                        " needs VHOST_USER_PROTOCOL_F_MQ, which the back-end does not offer",
                    ENOTSUP);
      offered |= feature_bit(kMq) | feature_bit(kCtrlVq);
      queues = static_cast<uint16_t>(2 * pairs + 1);
    }
    config.assign(kNetConfigBytes, 0);
    std::memcpy(config.data(), opt_.mac.data(), opt_.mac.size());
    config[6] = static_cast<uint8_t>(VIRTIO_NET_S_LINK_UP);
    config[8] = static_cast<uint8_t>(pairs & 0xff);
    config[9] = static_cast<uint8_t>(pairs >> 8);
    config[10] = 1500 & 0xff;
    config[11] = 1500 >> 8;
  }
  if (features_ != 0) {
    // A reconnect: the new back-end must serve what the driver already negotiated.
    const uint64_t device_bits = acked_ & allowed_features(opt_.device_id, true);
    if ((device_bits & ~offered) != 0)
      return fail("the new back-end lacks features the driver negotiated with the old one", ENOTSUP);
    if (queues != num_queues_) return fail("the new back-end serves a different number of queues", ENOTSUP);
    if (opt_.device_id == kDeviceIdBlock && config != config_)
      log_warn(opt_.name + ": the new back-end's configuration (e.g. capacity) differs");
  } else {
    features_ = offered;
    num_queues_ = queues;
    config_ = std::move(config);
  }
  backend_features_ = features;
  return {};
}

void Frontend::read_config(uint32_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = offset + i < config_.size() ? config_[offset + i] : 0;
}

Status Frontend::negotiate(uint64_t features) {
  if ((features & ~features_) != 0)
    return fail(opt_.name + ": the driver accepted features that were not offered", EINVAL);
  std::lock_guard lock(mu_);
  acked_ = features;
  return {};
}

// Programs every bound ring on the current connection. restore: the back-end is new, the rings'
// positions come from guest memory (the used index its predecessor published).
Status Frontend::program_rings(bool restore) {
  const ActivateContext& ctx = *active_;
  // Only bits the back-end offered: MAC, STATUS, MQ and CTRL_VQ may be iovirt's own (config space
  // and control queue emulated here) and must not reach a back-end that never offered them.
  uint64_t f = acked_ & backend_features_;
  if ((backend_features_ & feature_bit(kFeatureProtocolFeatures)) != 0)
    f |= feature_bit(kFeatureProtocolFeatures);
  IOVIRT_CHECK_CTX(send(make_request(Request::SetFeatures, U64{f})), "");

  MemTable table;
  for (const GuestRegion& r : ctx.mem->regions()) {
    table.regions.push_back(MemRegion{r.gpa, r.size, reinterpret_cast<uint64_t>(r.host), r.fd_offset});
    Fd dup(::fcntl(r.fd, F_DUPFD_CLOEXEC, 0));
    if (!dup) return fail_errno("dup of a guest memory fd");
    table.fds.push_back(std::move(dup));
  }
  IOVIRT_CHECK_CTX(send(make_request(Request::SetMemTable, std::move(table))), "");
  const bool packed = has(acked_, VIRTIO_F_RING_PACKED);
  if ((protocol_ & (1ull << protocol_feature::kInflightShmfd)) != 0 &&
      (opt_.device_id == kDeviceIdBlock || packed)) {
    IOVIRT_CHECK_CTX(share_inflight(), "inflight area");
  } else if (restore && packed) {
    return fail("the new back-end does not offer INFLIGHT_SHMFD, without which the packed rings "
                "cannot be restored",
                ENOTSUP);
  }

  for (const QueueBinding& b : ctx.queues) {
    if (ctrl_index_ && b.index == *ctrl_index_) continue;  // served here (serve_ctrl)
    const std::string q = "queue " + std::to_string(b.index);
    const Virtqueue& vq = *b.queue;
    auto addrs = vhost::ring_user_addrs(*ctx.mem, vq);
    if (!addrs) return std::unexpected(std::move(addrs.error()).context(q));
    // Packed: position | wrap << 15 of a ring that has not run (0x8000); on a restore the
    // back-end takes both positions from the inflight area instead.
    uint16_t base = vq.next_avail();
    if (restore && !packed) {
      // The split ring's used->idx (offset 2 of the used ring): every chain below it completed.
      auto used = ctx.mem->read_obj<uint16_t>(vq.device_area() + 2);
      if (!used) return std::unexpected(std::move(used.error()).context(q + ": used index"));
      base = *used;
    }
    IOVIRT_CHECK_CTX(send(make_request(Request::SetVringNum, VringState{b.index, vq.size()})), q);
    IOVIRT_CHECK_CTX(send(make_request(Request::SetVringBase, VringState{b.index, base})), q);
    IOVIRT_CHECK_CTX(send(make_request(Request::SetVringAddr,
                                       VringAddr{b.index, 0, addrs->desc, addrs->used, addrs->avail, 0})),
                     q);
    int call = ctx.irq->queue_irqfd(b.index);
    if (call < 0)
      return fail(q + ": no MSI-X vector assigned (vhost-user needs one per queue)", ENOTSUP);
    Fd callfd(::fcntl(call, F_DUPFD_CLOEXEC, 0));
    Fd kickfd(::fcntl(b.kick_fd, F_DUPFD_CLOEXEC, 0));
    if (!callfd || !kickfd) return fail_errno(q + ": dup of the kick/call eventfd");
    IOVIRT_CHECK_CTX(send(make_request(Request::SetVringCall, VringFd{b.index, std::move(callfd)})), q);
    IOVIRT_CHECK_CTX(send(make_request(Request::SetVringKick, VringFd{b.index, std::move(kickfd)})), q);
    if ((backend_features_ & feature_bit(kFeatureProtocolFeatures)) != 0) {
      // net: only the pairs the driver enabled (section 5.1.6.5.5: the first one until
      // VQ_PAIRS_SET).
      const bool on = opt_.device_id != kDeviceIdNet || b.index / 2 < active_pairs_;
      IOVIRT_CHECK_CTX(send(make_request(Request::SetVringEnable, VringState{b.index, on ? 1u : 0u})), q);
    }
    // The old back-end may have missed kicks while it was going away: one more costs nothing.
    if (restore) {
      const uint64_t one = 1;
      (void)!::write(b.kick_fd, &one, sizeof one);
    }
  }
  return {};
}

// The inflight area lives as long as the driver's device (QEMU's rule: a device reset drops it):
// the first back-end makes it (GET_INFLIGHT_FD), every back-end after a reconnect gets the same
// one (SET_INFLIGHT_FD) and resubmits what its predecessor left in flight.
Status Frontend::share_inflight() {
  if (!inflight_fd_) {
    const InflightWire ask{0, 0, num_queues_, opt_.queue_size, 0};
    IOVIRT_TRY_CTX(reply, request(Request::GetInflightFd, Inflight{ask, Fd()}), "");
    auto* in = std::get_if<Inflight>(&reply.body);
    if (in == nullptr || !in->fd || in->info.mmap_size == 0)
      return fail("GET_INFLIGHT_FD: the back-end's reply has no area", EPROTO);
    inflight_info_ = in->info;
    inflight_fd_ = std::move(in->fd);
  }
  Fd dup(::fcntl(inflight_fd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!dup) return fail_errno("dup of the inflight fd");
  return send(make_request(Request::SetInflightFd, Inflight{inflight_info_, std::move(dup)}));
}

Status Frontend::activate(ActivateContext ctx) {
  stop_ctrl();
  std::lock_guard lock(mu_);
  active_.emplace(std::move(ctx));
  active_pairs_ = 1;
  ctrl_index_.reset();
  if (opt_.device_id == kDeviceIdNet && has(acked_, net_feature::kCtrlVq)) {
    const uint16_t pairs = has(acked_, net_feature::kMq) ? opt_.queues : 1;
    for (const QueueBinding& b : active_->queues) {
      if (b.index == 2 * pairs) ctrl_index_ = b.index;
    }
  }
  if (ctrl_index_) {
    IOVIRT_CHECK_CTX(start_ctrl(), opt_.name + ": control queue");
  }
  if (!conn_) {
    log_warn(opt_.name + ": driver ready while the back-end is away; rings go to it on reconnect");
    return {};
  }
  if (auto st = program_rings(false); !st) {
    drop_connection("programming the rings: " + st.error().what());
  }
  return {};
}

// The control queue's own thread: requests parsed by the same code as the in-process device's
// (serve_ctrl_queue), never on a vCPU thread; VQ_PAIRS_SET enables or disables the pairs' rings
// in the back-end.
Status Frontend::start_ctrl() {
  // active_ is set and mu_ held.
  const QueueBinding* ctrl = nullptr;
  for (const QueueBinding& b : active_->queues) {
    if (b.index == *ctrl_index_) ctrl = &b;
  }
  IOVIRT_TRY_CTX(stop, EventFd::create(), "stop eventfd");
  ctrl_stop_.emplace(std::move(stop));
  if (!ctrl_metrics_) {
    ctrl_metrics_.emplace(QueueMetrics::create(metrics_, opt_.name, *ctrl_index_));
    net_metrics_.emplace(NetMetrics::create(metrics_, opt_.name));
  }
  ServedQueue q{ctrl->index, ctrl->queue, ctrl->kick_fd, &*ctrl_metrics_, false};
  const bool mq = has(acked_, net_feature::kMq);
  ctrl_thread_ = std::thread([this, q, mq, ctx = &*active_, stopfd = ctrl_stop_->fd()]() mutable {
    const SetPairs set = [this](uint16_t n) { set_pairs(n); };
    pollfd p[2] = {{stopfd, POLLIN, 0}, {q.kick_fd, POLLIN, 0}};
    // Requests queued before DRIVER_OK are served at once.
    bool ok = serve_ctrl_queue(*ctx, q, opt_.name, set, *net_metrics_, opt_.queues, mq);
    while (ok) {
      if (::poll(p, 2, -1) < 0 && errno != EINTR) break;
      if (p[0].revents != 0) break;
      if (p[1].revents != 0) {
        uint64_t v = 0;
        if (::read(q.kick_fd, &v, sizeof v) == sizeof v) q.m->kicks->inc();
        ok = serve_ctrl_queue(*ctx, q, opt_.name, set, *net_metrics_, opt_.queues, mq);
      }
    }
  });
  return {};
}

void Frontend::stop_ctrl() {
  if (ctrl_thread_.joinable()) {
    (void)ctrl_stop_->write();
    ctrl_thread_.join();
  }
}

void Frontend::set_pairs(uint16_t n) {
  std::lock_guard lock(mu_);
  if (n == active_pairs_) return;
  active_pairs_ = n;
  if (!conn_ || !active_ || (backend_features_ & feature_bit(kFeatureProtocolFeatures)) == 0) return;
  for (const QueueBinding& b : active_->queues) {
    if (ctrl_index_ && b.index == *ctrl_index_) continue;
    const uint32_t on = b.index / 2 < n ? 1 : 0;
    if (auto st = send(make_request(Request::SetVringEnable, VringState{b.index, on})); !st) {
      drop_connection("enabling queue pairs: " + st.error().what());  // reconnect re-applies n
      return;
    }
  }
  log_info(opt_.name + ": " + std::to_string(n) + " queue pair(s) enabled");
}

void Frontend::reset() {
  stop_ctrl();
  std::lock_guard lock(mu_);
  if (!active_) return;
  if (conn_) {
    // GET_VRING_BASE stops each ring in the back-end (the spec's "stopped" state).
    for (const QueueBinding& b : active_->queues) {
      if (ctrl_index_ && b.index == *ctrl_index_) continue;
      auto r = request(Request::GetVringBase, VringState{b.index, 0});
      if (!r) {
        drop_connection("stopping queue " + std::to_string(b.index) + ": " + r.error().what());
        break;
      }
    }
  }
  active_.reset();
  inflight_fd_.reset();  // a reset device has nothing in flight
}

void Frontend::drop_connection(const std::string& why) {
  // mu_ held.
  if (!conn_) return;
  log_warn(opt_.name + ": vhost-user back-end at " + opt_.socket + " lost (" + why +
           "); reconnecting, the guest keeps running");
  conn_.reset();
  connected_ = false;
  connected_gauge_->set(0);
}

void Frontend::monitor_loop() {
  using clock = std::chrono::steady_clock;
  uint32_t backoff = opt_.backoff_first_ms;
  auto last_report = clock::now();
  for (;;) {
    int fd = -1;
    {
      std::lock_guard lock(mu_);
      if (conn_) fd = conn_->fd();
    }
    if (fd >= 0) {
      // Only hang-up matters: replies are read by the request()s themselves.
      pollfd p[2] = {{stop_->fd(), POLLIN, 0}, {fd, POLLRDHUP, 0}};
      int n = ::poll(p, 2, -1);
      if (n < 0 && errno != EINTR) {
        log_error(opt_.name + ": vhost-user monitor poll: " + std::strerror(errno));
        return;
      }
      if (p[0].revents != 0) return;
      if ((p[1].revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) != 0) {
        std::lock_guard lock(mu_);
        if (conn_ && conn_->fd() == fd) drop_connection("the back-end hung up");
        backoff = opt_.backoff_first_ms;
      }
      continue;
    }
    // Disconnected: wait, then try again; no time limit.
    pollfd s{stop_->fd(), POLLIN, 0};
    if (::poll(&s, 1, static_cast<int>(backoff)) > 0) return;
    auto conn = dial(opt_.socket);
    if (!conn) {
      backoff = std::min(backoff * 2, opt_.backoff_max_ms);
      if (clock::now() - last_report > std::chrono::seconds(30)) {
        log_warn(opt_.name + ": still waiting for the vhost-user back-end at " + opt_.socket);
        last_report = clock::now();
      }
      continue;
    }
    std::lock_guard lock(mu_);
    conn_.emplace(std::move(*conn));
    Status st = handshake();
    if (st && active_) st = program_rings(true);
    if (!st) {
      const std::string why = st.error().what();
      drop_connection("after reconnecting: " + why);
      if (st.error().code() == ENOTSUP && active_ && active_->fail) active_->fail(opt_.name + ": " + why);
      backoff = std::min(backoff * 2, opt_.backoff_max_ms);
      continue;
    }
    connected_ = true;
    connected_gauge_->set(1);
    reconnects_.fetch_add(1);
    reconnect_counter_->inc();
    backoff = opt_.backoff_first_ms;
    log_info(opt_.name + ": reconnected to the vhost-user back-end at " + opt_.socket +
             (!active_                              ? ""
              : has(acked_, VIRTIO_F_RING_PACKED) ? "; rings restored from the inflight area"
                                                  : "; rings restored from the used indexes"));
  }
}

}  // namespace iovirt::virtio::vhost_user
