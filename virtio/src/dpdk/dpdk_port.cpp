// DPDK ethdev PacketPort (see dpdk_port.hpp for the SPEC syntax and the design).
//
// One DpdkDevice per ethdev port and process holds the mempool and the port's run state; one
// DpdkPacketPort per queue pair is the PacketPort a worker drives. The device is configured and
// started when the first pair of an activation gets its port, and drained and stopped when the
// last one is destroyed, so reset + re-activation reconfigures it from scratch.
//
// Only DPDK functions (no DPDK macros that expand to C casts, like rte_pktmbuf_mtod) are used
// here, so the house warnings (-Wold-style-cast and the rest) apply to this file in full; DPDK's
// headers come in as system headers.
#include "iovirt/virtio/dpdk_port.hpp"

#include <pthread.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "iovirt/core/log.hpp"

namespace iovirt::virtio {
namespace {

constexpr uint16_t kBurst = 64;          // mbufs per DPDK call
constexpr uint16_t kDefaultDesc = 1024;  // rx/tx descriptors per queue
constexpr unsigned kPoolCache = 256;     // per-lcore mempool cache

std::string rte_error_text(int err) {
  return rte_strerror(err);
}

// ---- SPEC ----

struct Spec {
  std::vector<std::string> eal;  // EAL arguments, without argv[0]
  std::string eal_text;          // as given, for messages
  std::string port;              // id or name; empty: the only port
  uint16_t rxd = kDefaultDesc;
  uint16_t txd = kDefaultDesc;
};

Result<uint16_t> parse_u16(std::string_view key, std::string_view v, uint16_t min) {
  unsigned n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc{} || p != v.data() + v.size() || n < min || n > 65535)
    return fail("dpdk: " + std::string(key) + "=" + std::string(v) + " is not a number in " +
                std::to_string(min) + "..65535");
  return static_cast<uint16_t>(n);
}

Result<Spec> parse_spec(const std::string& text) {
  Spec s;
  std::string_view rest = text;
  size_t semi = rest.find(';');
  s.eal_text = std::string(rest.substr(0, semi));
  for (size_t i = 0; i < s.eal_text.size();) {
    size_t j = s.eal_text.find(' ', i);
    if (j == std::string::npos) j = s.eal_text.size();
    if (j > i) s.eal.push_back(s.eal_text.substr(i, j - i));
    i = j + 1;
  }
  while (semi != std::string_view::npos) {
    rest = rest.substr(semi + 1);
    semi = rest.find(';');
    std::string_view opt = rest.substr(0, semi);
    if (opt.empty()) continue;
    size_t eq = opt.find('=');
    std::string_view key = opt.substr(0, eq);
    std::string_view val = eq == std::string_view::npos ? std::string_view{} : opt.substr(eq + 1);
    if (key == "port" && !val.empty()) {
      s.port = std::string(val);
    } else if (key == "rxd") {
      auto n = parse_u16(key, val, 1);
      if (!n) return std::unexpected(n.error());
      s.rxd = *n;
    } else if (key == "txd") {
      auto n = parse_u16(key, val, 1);
      if (!n) return std::unexpected(n.error());
      s.txd = *n;
    } else {
      return fail("dpdk: unknown option '" + std::string(opt) +
                  "' (expected '<EAL args>[;port=ID|NAME][;rxd=N][;txd=N]')");
    }
  }
  return s;
}

// ---- EAL: once per process ----

std::mutex g_eal_mu;
bool g_eal_done = false;
std::string g_eal_args;
std::vector<std::string> g_eal_non_vdev;  // g_eal_args without its --vdev options

// The `--vdev` devargs among EAL arguments ("--vdev=X" or "--vdev X").
std::vector<std::string> vdev_args(const std::vector<std::string>& eal) {
  std::vector<std::string> out;
  for (size_t i = 0; i < eal.size(); ++i) {
    std::string_view a = eal[i];
    if (a.starts_with("--vdev=")) {
      out.emplace_back(a.substr(7));
    } else if (a == "--vdev" && i + 1 < eal.size()) {
      out.push_back(eal[++i]);
    }
  }
  return out;
}

std::vector<std::string> non_vdev_args(const std::vector<std::string>& eal) {
  std::vector<std::string> out;
  for (size_t i = 0; i < eal.size(); ++i) {
    if (eal[i].starts_with("--vdev=")) continue;
    if (eal[i] == "--vdev") {
      ++i;
      continue;
    }
    out.push_back(eal[i]);
  }
  return out;
}

// After the EAL is up, a later SPEC's vdevs are probed now (hot-plug) unless they exist.
Status hotplug_vdevs(const Spec& spec) {
  for (const std::string& devargs : vdev_args(spec.eal)) {
    std::string name = devargs.substr(0, devargs.find(','));
    uint16_t id = 0;
    if (rte_eth_dev_get_port_by_name(name.c_str(), &id) == 0) continue;
    int rc = rte_dev_probe(devargs.c_str());
    if (rc < 0)
      return fail("dpdk: cannot add --vdev=" + devargs +
                  " to the running EAL: " + rte_error_text(-rc));
    log_info("dpdk: added --vdev=" + devargs);
  }
  return {};
}

Status eal_init(const Spec& spec) {
  std::lock_guard lock(g_eal_mu);
  if (g_eal_done) {
    // A SPEC with only --vdev options (or the same options) is the quiet way to add a port.
    if (auto others = non_vdev_args(spec.eal); !others.empty() && others != g_eal_non_vdev)
      log_warn("dpdk: the EAL is already initialised (with '" + g_eal_args + "'); of '" +
               spec.eal_text + "' only the --vdev devices are used");
    return hotplug_vdevs(spec);
  }
  // The EAL keeps pointers into argv for some options: the strings live as long as the process.
  static std::vector<std::string>* storage = new std::vector<std::string>();
  storage->clear();
  storage->push_back("iovirt-vhost");
  for (const auto& a : spec.eal) storage->push_back(a);
  static std::vector<char*>* argv = new std::vector<char*>();
  argv->clear();
  for (auto& a : *storage) argv->push_back(a.data());
  argv->push_back(nullptr);

  // rte_eal_init pins the calling thread to the main lcore's CPU; the caller (the daemon's main
  // thread, whose affinity every later thread inherits) keeps the CPUs it had.
  cpu_set_t saved;
  CPU_ZERO(&saved);
  bool have_saved = pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) == 0;
  int rc = rte_eal_init(static_cast<int>(argv->size() - 1), argv->data());
  int err = rte_errno;
  if (have_saved) pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
  if (rc < 0)
    return fail("dpdk: EAL initialisation failed with arguments '" + spec.eal_text +
                "': " + rte_error_text(err) + " (see the EAL's messages above)");
  g_eal_done = true;
  g_eal_args = spec.eal_text;
  g_eal_non_vdev = non_vdev_args(spec.eal);
  return {};
}

// ---- ports ----

std::string list_ports() {
  std::string out;
  for (uint64_t p = rte_eth_find_next_owned_by(0, RTE_ETH_DEV_NO_OWNER); p < RTE_MAX_ETHPORTS;
       p = rte_eth_find_next_owned_by(static_cast<uint16_t>(p + 1), RTE_ETH_DEV_NO_OWNER)) {
    std::array<char, RTE_ETH_NAME_MAX_LEN> name{};
    if (rte_eth_dev_get_name_by_port(static_cast<uint16_t>(p), name.data()) != 0) continue;
    if (!out.empty()) out += ", ";
    out += std::to_string(p);
    out += ' ';
    out += name.data();
  }
  return out.empty() ? "none; add a device with --vdev= or -a PCI" : out;
}

Result<uint16_t> find_port(const std::string& want) {
  if (want.empty()) {
    if (rte_eth_dev_count_avail() != 1)
      return fail("dpdk: " + std::to_string(rte_eth_dev_count_avail()) +
                  " ethdev ports; choose one with ';port=ID|NAME' (available: " + list_ports() +
                  ")");
    return static_cast<uint16_t>(rte_eth_find_next_owned_by(0, RTE_ETH_DEV_NO_OWNER));
  }
  unsigned id = 0;
  auto [p, ec] = std::from_chars(want.data(), want.data() + want.size(), id);
  if (ec == std::errc{} && p == want.data() + want.size()) {
    if (id < RTE_MAX_ETHPORTS && rte_eth_dev_is_valid_port(static_cast<uint16_t>(id)))
      return static_cast<uint16_t>(id);
  } else {
    uint16_t pid = 0;
    if (rte_eth_dev_get_port_by_name(want.c_str(), &pid) == 0) return pid;
  }
  return fail("dpdk: no ethdev port '" + want + "' (available: " + list_ports() + ")");
}

std::string port_name(uint16_t port) {
  std::array<char, RTE_ETH_NAME_MAX_LEN> name{};
  if (rte_eth_dev_get_name_by_port(port, name.data()) != 0) return std::to_string(port);
  return name.data();
}

// Registers the calling (non-EAL) thread as an EAL thread on first use, so it gets an lcore id
// and with it a mempool cache; unregisters at thread exit so lcore ids are not used up by
// workers that come and go with each activation.
struct LcoreRegistration {
  bool tried = false;
  bool registered = false;
  LcoreRegistration() = default;
  LcoreRegistration(const LcoreRegistration&) = delete;
  LcoreRegistration& operator=(const LcoreRegistration&) = delete;
  ~LcoreRegistration() {
    if (registered) rte_thread_unregister();
  }
};
thread_local LcoreRegistration t_lcore;
std::atomic<bool> g_register_warned{false};

[[gnu::noinline]] void register_thread_slow() {
  t_lcore.tried = true;
  if (rte_lcore_id() != LCORE_ID_ANY) return;  // an EAL thread already (the main lcore)
  if (rte_thread_register() == 0) {
    t_lcore.registered = true;
    return;
  }
  if (!g_register_warned.exchange(true))
    log_warn("dpdk: cannot register a worker thread with the EAL (" + rte_error_text(rte_errno) +
             "); it runs without a mempool cache (slower, still correct)");
}

inline void register_thread() {
  if (!t_lcore.tried) [[unlikely]]
    register_thread_slow();
}

void add(std::atomic<uint64_t>& c, uint64_t n) {
  if (n != 0) c.fetch_add(n, std::memory_order_relaxed);
}

class DpdkDevice;

// Ports by id, so factories for the same port share one device (one configure, one pool).
std::mutex g_devices_mu;
std::map<uint16_t, std::weak_ptr<DpdkDevice>> g_devices;

class DpdkDevice final {
 public:
  DpdkDevice(uint16_t port, std::string name, rte_mempool* pool, uint16_t max_pairs, uint16_t rxd,
             uint16_t txd)
      : port_(port),
        name_(std::move(name)),
        pool_(pool),
        max_pairs_(max_pairs),
        rxd_(rxd),
        txd_(txd),
        taken_(max_pairs, false) {}
  DpdkDevice(const DpdkDevice&) = delete;
  DpdkDevice& operator=(const DpdkDevice&) = delete;

  ~DpdkDevice() {
    // Ports hold the device, so none is live here and the port is stopped. A stopped port keeps
    // its queues, and a NIC PMD (net_tap too) keeps its rx rings filled with mbufs of this pool
    // until the queues are set up again or the port is closed; ethdev has no call to release a
    // queue and closing would unplug a vdev. So the pool stays while any mbuf is out: a later
    // factory for this port sets the queues up again, which returns them.
    if (started_) stop_locked();
    unsigned out = rte_mempool_in_use_count(pool_);
    if (out == 0) {
      rte_mempool_free(pool_);
    } else {
      log_debug("dpdk port " + name_ + ": its queues still hold " + std::to_string(out) +
                " mbufs; keeping their mempool");
    }
  }

  [[nodiscard]] uint16_t port() const { return port_; }
  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] rte_mempool* pool() const { return pool_; }
  [[nodiscard]] uint16_t max_pairs() const { return max_pairs_; }
  [[nodiscard]] uint32_t max_frame() const {
    return static_cast<uint32_t>(rte_pktmbuf_data_room_size(pool_)) - RTE_PKTMBUF_HEADROOM;
  }

  // Claims queue `pair` of an activation with `pairs` pairs; the first claim configures and
  // starts the port.
  Status acquire(uint16_t pair, uint16_t pairs) {
    std::lock_guard lock(mu_);
    if (pairs == 0 || pairs > max_pairs_)
      return fail("dpdk port " + name_ + ": asked for " + std::to_string(pairs) +
                  " queue pairs, set up for at most " + std::to_string(max_pairs_));
    if (pair >= pairs)
      return fail("dpdk port " + name_ + ": queue pair " + std::to_string(pair) + " of " +
                  std::to_string(pairs));
    if (live_ == 0) {
      IOVIRT_CHECK_CTX(start_locked(pairs), "dpdk port " + name_);
    } else if (pairs != active_pairs_) {
      return fail("dpdk port " + name_ + " is running with " + std::to_string(active_pairs_) +
                  " queue pairs; cannot add a port for " + std::to_string(pairs));
    }
    if (taken_[pair])
      return fail("dpdk port " + name_ + ": queue " + std::to_string(pair) + " already has a port");
    taken_[pair] = true;
    ++live_;
    return {};
  }

  // The last port of an activation gone: drain and stop, so nothing from this activation is
  // delivered to the next one and the mbufs go back to the pool.
  void release(uint16_t pair) {
    std::lock_guard lock(mu_);
    taken_[pair] = false;
    if (--live_ == 0) stop_locked();
  }

 private:
  Status start_locked(uint16_t pairs) {
    if (started_) stop_locked();
    rte_eth_dev_info info{};
    int rc = rte_eth_dev_info_get(port_, &info);
    if (rc != 0) return fail("rte_eth_dev_info_get: " + rte_error_text(-rc));
    rte_eth_conf conf{};
    // Several queue pairs on a NIC: spread flows over the rx queues (RSS) when it can.
    uint64_t rss =
        info.flow_type_rss_offloads & (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP);
    if (pairs > 1 && rss != 0) {
      conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
      conf.rx_adv_conf.rss_conf.rss_hf = rss;
    }
    // All mbufs come from one pool with refcnt 1: the PMD may free them the fast way.
    if ((info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE) != 0)
      conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
    rc = rte_eth_dev_configure(port_, pairs, pairs, &conf);
    if (rc != 0)
      return fail("rte_eth_dev_configure(" + std::to_string(pairs) +
                  " queues): " + rte_error_text(-rc));
    int socket = rte_eth_dev_socket_id(port_);
    unsigned sock =
        socket < 0 ? static_cast<unsigned>(SOCKET_ID_ANY) : static_cast<unsigned>(socket);
    rte_eth_txconf txconf = info.default_txconf;
    txconf.offloads = conf.txmode.offloads;
    for (uint16_t q = 0; q < pairs; ++q) {
      rc = rte_eth_rx_queue_setup(port_, q, rxd_, sock, nullptr, pool_);
      if (rc != 0) return fail("rx queue " + std::to_string(q) + " setup: " + rte_error_text(-rc));
      rc = rte_eth_tx_queue_setup(port_, q, txd_, sock, &txconf);
      if (rc != 0) return fail("tx queue " + std::to_string(q) + " setup: " + rte_error_text(-rc));
    }
    rc = rte_eth_dev_start(port_);
    if (rc != 0) return fail("rte_eth_dev_start: " + rte_error_text(-rc));
    started_ = true;
    active_pairs_ = pairs;
    log_info("dpdk port " + name_ + " started with " + std::to_string(pairs) + " queue pairs");
    return {};
  }

  void stop_locked() {
    std::array<rte_mbuf*, kBurst> mb{};
    for (uint16_t q = 0; q < active_pairs_; ++q) {
      // Bounded: a NIC keeps receiving while we drain.
      for (int round = 0; round < 1024; ++round) {
        uint16_t n = rte_eth_rx_burst(port_, q, mb.data(), kBurst);
        if (n == 0) break;
        rte_pktmbuf_free_bulk(mb.data(), n);
      }
    }
    int rc = rte_eth_dev_stop(port_);
    if (rc != 0) log_warn("dpdk port " + name_ + ": rte_eth_dev_stop: " + rte_error_text(-rc));
    started_ = false;
    active_pairs_ = 0;
  }

  const uint16_t port_;
  const std::string name_;
  rte_mempool* const pool_;
  const uint16_t max_pairs_;
  const uint16_t rxd_;
  const uint16_t txd_;
  std::mutex mu_;
  std::vector<bool> taken_;
  uint32_t live_ = 0;
  uint16_t active_pairs_ = 0;
  bool started_ = false;
};

uint8_t* mbuf_data(rte_mbuf* m) {
  return static_cast<uint8_t*>(m->buf_addr) + m->data_off;
}

class DpdkPacketPort final : public PacketPort {
 public:
  DpdkPacketPort(std::shared_ptr<DpdkDevice> dev, uint16_t queue,
                 std::shared_ptr<DpdkPortStats> stats)
      : dev_(std::move(dev)),
        stats_(std::move(stats)),
        pool_(dev_->pool()),
        port_(dev_->port()),
        queue_(queue),
        max_frame_(dev_->max_frame()) {}
  DpdkPacketPort(const DpdkPacketPort&) = delete;
  DpdkPacketPort& operator=(const DpdkPacketPort&) = delete;
  ~DpdkPacketPort() override { dev_->release(queue_); }

  [[nodiscard]] std::string describe() const override {
    return "dpdk port " + dev_->name() + " queue " + std::to_string(queue_);
  }

  uint32_t alloc(std::span<PacketBuf> bufs) override {
    register_thread();
    std::array<rte_mbuf*, kBurst> mb{};
    size_t done = 0;
    while (done < bufs.size()) {
      auto n = static_cast<unsigned>(std::min<size_t>(kBurst, bufs.size() - done));
      if (rte_pktmbuf_alloc_bulk(pool_, mb.data(), n) != 0) {
        // The pool cannot give n at once (bulk is all or nothing): take what it has.
        while (done < bufs.size()) {
          rte_mbuf* m = rte_pktmbuf_alloc(pool_);
          if (m == nullptr) break;
          fill_empty(bufs[done++], m);
        }
        add(stats_->alloc_failed, bufs.size() - done);
        break;
      }
      for (unsigned i = 0; i < n; ++i) fill_empty(bufs[done + i], mb[i]);
      done += n;
    }
    return static_cast<uint32_t>(done);
  }

  void transmit(std::span<PacketBuf> bufs) override {
    register_thread();
    std::array<rte_mbuf*, kBurst> mb{};
    std::array<rte_mbuf*, kBurst> bad{};
    size_t i = 0;
    uint64_t sent_total = 0;
    while (i < bufs.size()) {
      uint16_t n = 0;
      uint16_t nbad = 0;
      for (; i < bufs.size() && n < kBurst && nbad < kBurst; ++i) {
        auto* m = static_cast<rte_mbuf*>(bufs[i].cookie);
        if (m == nullptr) continue;
        if (bufs[i].len == 0 || bufs[i].len > max_frame_) {
          bad[nbad++] = m;
          continue;
        }
        m->data_len = static_cast<uint16_t>(bufs[i].len);
        m->pkt_len = bufs[i].len;
        mb[n++] = m;
      }
      uint16_t sent = n == 0 ? 0 : rte_eth_tx_burst(port_, queue_, mb.data(), n);
      sent_total += sent;
      if (sent < n) {
        // The tx queue is full: drop (a NIC at line rate does the same), counted.
        rte_pktmbuf_free_bulk(mb.data() + sent, n - sent);
        add(stats_->tx_dropped, n - sent);
      }
      if (nbad != 0) {
        rte_pktmbuf_free_bulk(bad.data(), nbad);
        add(stats_->tx_bad_len, nbad);
      }
    }
    add(stats_->tx_frames, sent_total);
  }

  uint32_t receive(std::span<PacketBuf> bufs) override {
    register_thread();
    std::array<rte_mbuf*, kBurst> mb{};
    std::array<rte_mbuf*, kBurst> multi{};
    size_t got = 0;
    uint64_t multiseg = 0;
    while (got < bufs.size()) {
      auto want = static_cast<uint16_t>(std::min<size_t>(kBurst, bufs.size() - got));
      uint16_t n = rte_eth_rx_burst(port_, queue_, mb.data(), want);
      uint16_t nmulti = 0;
      for (uint16_t k = 0; k < n; ++k) {
        rte_mbuf* m = mb[k];
        if (m->nb_segs != 1) {
          multi[nmulti++] = m;
          continue;
        }
        PacketBuf& b = bufs[got++];
        b.data = mbuf_data(m);
        b.len = m->data_len;
        b.cap = m->data_len;
        b.cookie = m;
      }
      if (nmulti != 0) {
        rte_pktmbuf_free_bulk(multi.data(), nmulti);  // frees every segment of each chain
        multiseg += nmulti;
      }
      if (n < want) break;
    }
    add(stats_->rx_frames, got);
    add(stats_->rx_multiseg_dropped, multiseg);
    return static_cast<uint32_t>(got);
  }

  void release(std::span<PacketBuf> bufs) override {
    register_thread();
    std::array<rte_mbuf*, kBurst> mb{};
    unsigned n = 0;
    for (PacketBuf& b : bufs) {
      if (b.cookie == nullptr) continue;
      mb[n++] = static_cast<rte_mbuf*>(b.cookie);
      b.cookie = nullptr;
      if (n == kBurst) {
        rte_pktmbuf_free_bulk(mb.data(), n);
        n = 0;
      }
    }
    if (n != 0) rte_pktmbuf_free_bulk(mb.data(), n);
  }

  [[nodiscard]] int rx_wake() const override { return kRxPolled; }
  [[nodiscard]] uint32_t max_frame() const override { return max_frame_; }

 private:
  static void fill_empty(PacketBuf& b, rte_mbuf* m) {
    b.data = mbuf_data(m);
    b.len = 0;
    b.cap = rte_pktmbuf_tailroom(m);
    b.cookie = m;
  }

  std::shared_ptr<DpdkDevice> dev_;
  std::shared_ptr<DpdkPortStats> stats_;
  rte_mempool* const pool_;
  const uint16_t port_;
  const uint16_t queue_;
  const uint32_t max_frame_;
};

std::atomic<unsigned> g_pool_seq{0};

Result<std::shared_ptr<DpdkDevice>> open_device(const Spec& spec, uint16_t max_pairs) {
  auto found = find_port(spec.port);
  if (!found) return std::unexpected(found.error());
  uint16_t port = *found;
  std::string name = port_name(port);

  rte_eth_dev_info info{};
  int rc = rte_eth_dev_info_get(port, &info);
  if (rc != 0) return fail("dpdk port " + name + ": rte_eth_dev_info_get: " + rte_error_text(-rc));
  uint16_t queues = std::min(info.max_rx_queues, info.max_tx_queues);
  if (max_pairs > queues)
    return fail("dpdk port " + name + " supports at most " + std::to_string(queues) +
                " queues; use --queues " + std::to_string(queues));

  std::lock_guard lock(g_devices_mu);
  if (auto it = g_devices.find(port); it != g_devices.end()) {
    if (auto dev = it->second.lock()) {
      if (max_pairs > dev->max_pairs())
        return fail("dpdk port " + name + " is already in use with at most " +
                    std::to_string(dev->max_pairs()) + " queue pairs; cannot use it with " +
                    std::to_string(max_pairs));
      return dev;
    }
  }

  uint16_t rxd = spec.rxd;
  uint16_t txd = spec.txd;
  rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
  if (rc != 0)
    return fail("dpdk port " + name + ": rte_eth_dev_adjust_nb_rx_tx_desc: " + rte_error_text(-rc));

  // Every mbuf that can be out at once: the rx and tx rings of each pair, the bursts a worker
  // holds (frames allocated for the guest's tx, frames received and not yet released), the
  // per-lcore caches, and some slack for the control thread.
  uint64_t per_pair = uint64_t{rxd} + txd + 4u * kBurst + kPoolCache * 3u / 2u;
  uint64_t want = uint64_t{max_pairs} * per_pair + 1024;
  auto mbufs = static_cast<unsigned>(want);
  int socket = rte_eth_dev_socket_id(port);
  std::string pool_name = "iovirt_p" + std::to_string(port) + "_" + std::to_string(g_pool_seq++);
  rte_mempool* pool =
      rte_pktmbuf_pool_create(pool_name.c_str(), mbufs, kPoolCache, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                              socket < 0 ? SOCKET_ID_ANY : socket);
  if (pool == nullptr) {
    uint64_t mib = (want * (RTE_MBUF_DEFAULT_BUF_SIZE + 256u) >> 20) + 1;
    return fail("dpdk port " + name + ": cannot create a mempool of " + std::to_string(mbufs) +
                " mbufs (about " + std::to_string(mib) + " MiB): " + rte_error_text(rte_errno) +
                " (reserve hugepages: echo 1024 > /proc/sys/vm/nr_hugepages, or give the EAL "
                "--no-huge -m MiB)");
  }
  auto dev = std::make_shared<DpdkDevice>(port, name, pool, max_pairs, rxd, txd);
  g_devices[port] = dev;
  log_info("dpdk port " + name + " (" + std::to_string(port) + ", " + info.driver_name + "): " +
           std::to_string(mbufs) + " mbufs, " + std::to_string(rxd) + "/" + std::to_string(txd) +
           " rx/tx descriptors, up to " + std::to_string(max_pairs) + " queue pairs");
  return dev;
}

}  // namespace

bool dpdk_available() {
  return true;
}

bool dpdk_eal_initialised() {
  std::lock_guard lock(g_eal_mu);
  return g_eal_done;
}

Result<PacketPortFactory> make_dpdk_port_factory(const std::string& spec_text, uint16_t max_pairs,
                                                 std::shared_ptr<DpdkPortStats> stats) {
  if (max_pairs == 0) return fail("dpdk: at least one queue pair");
  auto spec = parse_spec(spec_text);
  if (!spec) return std::unexpected(spec.error());
  if (auto st = eal_init(*spec); !st) return std::unexpected(st.error());
  auto dev = open_device(*spec, max_pairs);
  if (!dev) return std::unexpected(dev.error());
  if (!stats) stats = std::make_shared<DpdkPortStats>();
  return PacketPortFactory(
      [dev = std::move(*dev), stats = std::move(stats)](
          uint16_t pair, uint16_t pairs) -> Result<std::unique_ptr<PacketPort>> {
        if (auto st = dev->acquire(pair, pairs); !st) return std::unexpected(st.error());
        return std::unique_ptr<PacketPort>(std::make_unique<DpdkPacketPort>(dev, pair, stats));
      });
}

}  // namespace iovirt::virtio
