// virtio-net device (virtio 1.2 section 5.1): features, config space, negotiation and the choice
// of backend. The data path lives in net_tap_backend.cpp (iovirt threads) or in the kernel
// (net_vhost.cpp).
#include "iovirt/virtio/net.hpp"

#include <linux/if_tun.h>
#include <sys/random.h>

#include <algorithm>
#include <cstring>

#include "iovirt/core/log.hpp"
#include "iovirt/virtio/tap.hpp"
#include "iovirt/virtio/vhost_net.hpp"
#include "net_backend.hpp"

namespace iovirt::virtio {

namespace {

constexpr uint16_t kMaxQueuePairs = 256;

}  // namespace

NetMetrics NetMetrics::create(MetricsRegistry& m, std::string_view device, uint16_t pairs) {
  Labels l{{"device", std::string(device)}};
  NetMetrics nm{
      &m.counter("iovirt_net_tx_dropped_total", "TX frames dropped (bad header, tap refused)", l),
      &m.counter("iovirt_net_rx_dropped_total", "RX frames that did not fit the guest buffers", l),
      &m.counter("iovirt_net_rx_bad_chains_total", "RX chains without room for a header", l),
      &m.counter("iovirt_net_ctrl_commands_total", "Control-queue requests", l),
      &m.counter("iovirt_net_ctrl_errors_total", "Control-queue requests answered ERR", l),
      {}};
  for (uint16_t p = 0; p < pairs; ++p) {
    Labels pl{{"device", std::string(device)}, {"pair", std::to_string(p)}};
    nm.workers.push_back(NetMetrics::Worker{
        &m.counter("iovirt_net_worker_busy_cycles_total",
                   "TSC cycles the pair's polling worker spent in rounds that moved frames "
                   "(divide by iovirt_tsc_hz for seconds)",
                   pl),
        &m.counter("iovirt_net_worker_busy_rounds_total",
                   "Rounds of the pair's polling worker that moved frames", pl)});
  }
  return nm;
}

VirtioNet::VirtioNet(NetConfig cfg, MetricsRegistry& metrics, std::string name)
    : cfg_(std::move(cfg)),
      name_(std::move(name)),
      net_metrics_(NetMetrics::create(metrics, name_, cfg_.port ? cfg_.queue_pairs : 0)) {}

VirtioNet::~VirtioNet() {
  reset();
}

Result<std::unique_ptr<VirtioNet>> VirtioNet::create(const NetConfig& cfg, MetricsRegistry& metrics,
                                                     std::string name) {
  std::string where = name;
  where += cfg.port ? " (" + cfg.port_name + ")" : " (tap '" + cfg.tap + "')";
  if (cfg.queue_pairs == 0 || cfg.queue_pairs > kMaxQueuePairs) {
    return fail(where + ": queue_pairs must be 1.." + std::to_string(kMaxQueuePairs), EINVAL);
  }
  if (cfg.queue_size == 0 || cfg.queue_size > VIRTQ_MAX_SIZE ||
      (cfg.queue_size & (cfg.queue_size - 1)) != 0) {
    return fail(where + ": queue_size must be a power of 2 up to 32768", EINVAL);
  }
  if (cfg.poll_gap_ns > NetConfig::kMaxPollGapNs) {
    return fail(where + ": poll_gap_ns " + std::to_string(cfg.poll_gap_ns) + " is above the limit of " +
                    std::to_string(NetConfig::kMaxPollGapNs),
                EINVAL);
  }
  std::unique_ptr<VirtioNet> d(new VirtioNet(cfg, metrics, std::move(name)));

  if (cfg.port && cfg.vhost) {
    return fail(where + ": vhost=on needs a tap, not a packet port", EINVAL);
  }
  if (!cfg.port) {
    auto taps = tap::open(cfg.tap, cfg.queue_pairs);
    if (!taps) return std::unexpected(std::move(taps.error()).context(d->name_));
    d->taps_ = std::move(*taps);
    d->tap_attached_.assign(d->taps_.size(), true);
    d->tap_offloads_ = tap::probe_offloads(d->taps_[0].get());
  }

  if (cfg.mac) {
    d->mac_ = *cfg.mac;
    if ((d->mac_[0] & 1) != 0)
      return fail(where + ": the MAC address is a multicast address", EINVAL);
  } else {
    auto mac = random_mac();
    if (!mac) return std::unexpected(std::move(mac.error()).context(where));
    d->mac_ = *mac;
  }

  using namespace net_feature;
  uint64_t f = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) |
               feature_bit(VIRTIO_F_INDIRECT_DESC) | feature_bit(VIRTIO_F_RING_PACKED) |
               feature_bit(kMac) | feature_bit(kStatus) | feature_bit(kMrgRxbuf) |
               feature_bit(kCtrlVq);
  if (cfg.queue_pairs > 1) f |= feature_bit(kMq);
  // A port's worker returns every chain in the order it took it (tx in pop order, rx through
  // the chain cache in order, the control queue one by one). A driver that knows this frees and
  // refills its rings without searching: DPDK's virtio PMD switches to its in-order paths, which
  // is most of the difference to DPDK's own vhost. The tap's zero-copy tx completes out of
  // order, so the tap does not offer it.
  if (cfg.port) f |= feature_bit(VIRTIO_F_IN_ORDER);
  // The tap takes any virtio_net_hdr on write (the kernel checksums and segments); a port takes
  // plain frames, so nothing is offloaded to it.
  if (!cfg.port)
    f |= feature_bit(kCsum) | feature_bit(kHostTso4) | feature_bit(kHostTso6) |
       feature_bit(kHostEcn) | feature_bit(kHostUfo);
  // What the guest may receive is what the tap can be told to hand over (TUNSETOFFLOAD).
  const unsigned t = d->tap_offloads_;
  if ((t & TUN_F_CSUM) != 0) {
    f |= feature_bit(kGuestCsum);
    if ((t & TUN_F_TSO4) != 0) f |= feature_bit(kGuestTso4);
    if ((t & TUN_F_TSO6) != 0) f |= feature_bit(kGuestTso6);
    if ((t & TUN_F_TSO_ECN) != 0 && (t & (TUN_F_TSO4 | TUN_F_TSO6)) != 0)
      f |= feature_bit(kGuestEcn);
    if ((t & TUN_F_UFO) != 0) f |= feature_bit(kGuestUfo);
  }
  if (cfg.vhost) {
    auto vfd = vhost::open_device();
    if (!vfd) return std::unexpected(std::move(vfd.error()).context(d->name_));
    auto kf = vhost::get_features(vfd->get());
    if (!kf) return std::unexpected(std::move(kf.error()).context(d->name_));
    f = vhost::intersect_features(f, *kf);
    if (!has(f, VIRTIO_F_VERSION_1)) {
      return fail(d->name_ + ": this kernel's vhost-net lacks VIRTIO_F_VERSION_1; use vhost=off",
                  ENOTSUP);
    }
  }
  d->features_ = f;
  for (uint16_t q = 0; q < d->num_queues(); ++q) {
    d->queue_metrics_.push_back(QueueMetrics::create(metrics, d->name_, q));
  }
  return d;
}

Result<std::array<uint8_t, 6>> random_mac() {
  std::array<uint8_t, 6> mac{};
  if (::getrandom(mac.data(), mac.size(), 0) != static_cast<ssize_t>(mac.size()))
    return fail_errno("getrandom for a MAC address");
  mac[0] = static_cast<uint8_t>((mac[0] & 0xfe) | 0x02);  // unicast, locally administered
  return mac;
}

void VirtioNet::read_config(uint32_t offset, std::span<uint8_t> data) {
  // struct virtio_net_config (section 5.1.4): mac[6], status, max_virtqueue_pairs, mtu.
  std::array<uint8_t, kNetConfigSize> c{};
  std::memcpy(c.data(), mac_.data(), mac_.size());
  c[6] = static_cast<uint8_t>(VIRTIO_NET_S_LINK_UP);
  c[8] = static_cast<uint8_t>(cfg_.queue_pairs & 0xff);
  c[9] = static_cast<uint8_t>(cfg_.queue_pairs >> 8);
  c[10] = 1500 & 0xff;
  c[11] = 1500 >> 8;
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = offset + i < c.size() ? c[offset + i] : 0;
  }
}

Status VirtioNet::negotiate(uint64_t features) {
  if ((features & ~features_) != 0) {
    return fail(name_ + ": the driver accepted features that were not offered", EINVAL);
  }
  if (auto st = check_net_feature_deps(deps_view(features)); !st) {
    return std::unexpected(std::move(st.error()).context(name_));
  }
  negotiated_ = features;
  return {};
}

void VirtioNet::set_tap_queues(uint16_t attached) {
  if (taps_.size() < 2) return;
  // Attach first, then detach, so the tap never has zero queues attached.
  for (size_t i = 0; i < taps_.size(); ++i) {
    if (i < attached && !tap_attached_[i]) {
      if (auto st = tap::set_queue_enabled(taps_[i].get(), true); st) {
        tap_attached_[i] = true;
      } else {
        log_warn(name_ + ": " + st.error().message());
      }
    }
  }
  for (size_t i = 0; i < taps_.size(); ++i) {
    if (i >= attached && tap_attached_[i]) {
      if (auto st = tap::set_queue_enabled(taps_[i].get(), false); st) {
        tap_attached_[i] = false;
      } else {
        log_warn(name_ + ": " + st.error().message());
      }
    }
  }
}

void VirtioNet::set_active_pairs(uint16_t n) {
  // Section 5.1.6.5.5: only the first n pairs receive from now on.
  set_tap_queues(n);
  active_pairs_.store(n);
}

uint64_t VirtioNet::deps_view(uint64_t features) const {
  // The front-end's control queue stands in for CTRL_VQ where MQ or CTRL_RX need it.
  return cfg_.frontend_owns_ctrl ? features | feature_bit(net_feature::kCtrlVq) : features;
}

Status VirtioNet::activate(ActivateContext ctx) {
  reset();
  if (auto st = check_net_feature_deps(deps_view(ctx.features)); !st) {
    return std::unexpected(std::move(st.error()).context(name_));
  }
  const bool mq = has(ctx.features, net_feature::kMq);
  pairs_in_use_ = mq ? cfg_.queue_pairs : 1;  // section 5.1.2
  // -1: no control queue. (A plain int: g++ 12 -O2 misreads an optional<uint16_t> here.)
  const int ctrl_index =
      has(ctx.features, net_feature::kCtrlVq) && !cfg_.frontend_owns_ctrl ? 2 * pairs_in_use_ : -1;
  // The pairs that receive: the first until VQ_PAIRS_SET (section 5.1.6.5.5), or, when the
  // front-end owns the control queue, up to the last pair it bound a ring of.
  uint16_t receiving = 1;

  std::vector<PairQueues> pairs(pairs_in_use_);
  std::optional<ServedQueue> ctrl;
  for (const QueueBinding& b : ctx.queues) {
    if (b.queue == nullptr || b.index >= num_queues()) {
      return fail(name_ + ": the transport bound queue " + std::to_string(b.index) +
                      ", which does not exist",
                  EINVAL);
    }
    ServedQueue s{b.index, b.queue, b.kick_fd, &queue_metrics_[b.index], false};
    if (b.index == ctrl_index) {
      ctrl = s;
    } else if (b.index < 2 * pairs_in_use_) {
      if (cfg_.frontend_owns_ctrl) receiving = std::max<uint16_t>(receiving, b.index / 2 + 1);
      auto& p = pairs[b.index / 2];
      if (b.index % 2 == 0) {
        p.rx = s;
      } else {
        p.tx = s;
      }
    }
  }
  if (cfg_.port) return activate_ports(std::move(ctx), std::move(pairs), ctrl, receiving);
  for (size_t i = 0; i < pairs.size(); ++i) pairs[i].tap_fd = taps_[i].get();

  // What the guest takes on receive decides what the tap may hand over (TUNSETOFFLOAD).
  applied_offloads_ = tun_offload_flags(ctx.features) & tap_offloads_;
  if (auto st = tap::set_offload(taps_[0].get(), applied_offloads_); !st) {
    return std::unexpected(std::move(st.error()).context(name_));
  }
  active_pairs_.store(receiving);
  set_tap_queues(receiving);

  if (!cfg_.vhost) {
    std::vector<PairQueues> served;
    for (auto& p : pairs) {
      if (p.rx || p.tx) served.push_back(p);
    }
    if (served.empty() && ctrl) served.emplace_back();  // a thread for the control queue alone
    auto b = TapBackend::start(*this, std::move(ctx), std::move(served), ctrl, net_metrics_,
                               pairs_in_use_);
    if (!b) return std::unexpected(std::move(b.error()).context(name_));
    tap_backend_ = std::move(*b);
    return {};
  }

  std::vector<vhost::PairSetup> setups;
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (!pairs[i].rx || !pairs[i].tx) {
      // vhost-net serves a pair as a whole; a half-enabled pair stays idle.
      if (pairs[i].rx || pairs[i].tx) {
        log_warn(name_ + ": queue pair " + std::to_string(i) +
                 " has only one of its queues enabled; vhost-net leaves it idle");
      }
      continue;
    }
    setups.push_back(vhost::PairSetup{
        pairs[i].tap_fd, QueueBinding{pairs[i].rx->index, pairs[i].rx->q, pairs[i].rx->kick_fd},
        QueueBinding{pairs[i].tx->index, pairs[i].tx->q, pairs[i].tx->kick_fd}});
  }
  auto vb = vhost::VhostNetBackend::start(ctx, setups, name_);
  if (!vb) return std::unexpected(std::move(vb.error()).context(name_));
  vhost_backend_ = std::move(*vb);
  if (ctrl) {
    auto cb =
        TapBackend::start(*this, std::move(ctx), {PairQueues{}}, ctrl, net_metrics_, pairs_in_use_);
    if (!cb) {
      vhost_backend_.reset();
      return std::unexpected(std::move(cb.error()).context(name_));
    }
    ctrl_backend_ = std::move(*cb);
  }
  return {};
}

Status VirtioNet::activate_ports(ActivateContext ctx, std::vector<PairQueues> pairs,
                                 std::optional<ServedQueue> ctrl, uint16_t receiving) {
  active_pairs_.store(receiving);
  std::vector<PairQueues> served;
  std::vector<std::unique_ptr<PacketPort>> ports;
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (!pairs[i].rx && !pairs[i].tx && !(i == 0 && ctrl)) continue;
    auto port = cfg_.port(static_cast<uint16_t>(i), pairs_in_use_);
    if (!port) return std::unexpected(std::move(port.error()).context(name_));
    served.push_back(pairs[i]);
    ports.push_back(std::move(*port));
  }
  if (served.empty()) return {};
  auto b = PortBackend::start(*this, std::move(ctx), std::move(served), std::move(ports), ctrl,
                              net_metrics_, pairs_in_use_, cfg_.poll_us, cfg_.poll_gap_ns);
  if (!b) return std::unexpected(std::move(b.error()).context(name_));
  port_backend_ = std::move(*b);
  return {};
}

void VirtioNet::reset() {
  // Threads first: when this returns nothing of iovirt or the kernel touches the queues.
  port_backend_.reset();
  tap_backend_.reset();
  ctrl_backend_.reset();
  vhost_backend_.reset();
  if (applied_offloads_ != 0 && !taps_.empty()) {
    (void)tap::set_offload(taps_[0].get(), 0);
    applied_offloads_ = 0;
  }
  active_pairs_.store(1);
}

}  // namespace iovirt::virtio
