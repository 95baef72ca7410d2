// iovirt-vhost: the vhost-user back-end daemon. `iovirt-vhost blk --socket S --file F` serves
// iovirt's own VirtioBlk (io_uring, one thread per queue), `iovirt-vhost net --socket S --backend
// B` its VirtioNet (one thread per queue pair, frames to a PacketPort or a tap), to a vhost-user
// front-end through the VhostUserBackend transport (virtio/include/iovirt/virtio/vhost_user/
// backend.hpp).
//
// Signals: SIGINT and SIGTERM are blocked in every thread and taken by one sigwait thread, which
// stops the server; the device threads never see them.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/log.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/core/metrics_http.hpp"
#include "iovirt/core/tsc.hpp"
#include "iovirt/virtio/blk.hpp"
#include "iovirt/virtio/dpdk_port.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/packet_port.hpp"
#include "iovirt/virtio/vhost_user/backend.hpp"
#include "iovirt/vmm/vhost_cli.hpp"

namespace {

int die(const iovirt::Error& e) {
  std::fprintf(stderr, "iovirt-vhost: %s\n", e.message().c_str());
  return 1;
}

// Serves `dev` on `socket` until SIGINT/SIGTERM: the part blk and net share.
int serve(iovirt::virtio::VirtioDevice& dev, iovirt::MetricsRegistry& metrics,
          const std::string& socket, const std::string& metrics_addr, const sigset_t& set,
          const std::string& what) {
  using namespace iovirt;  // NOLINT
  auto backend = virtio::vhost_user::VhostUserBackend::create(dev, metrics);
  if (!backend) return die(backend.error());
  std::unique_ptr<MetricsServer> http;
  if (!metrics_addr.empty()) {
    auto m = MetricsServer::start(metrics, metrics_addr);
    if (!m) return die(m.error());
    http = std::move(*m);
  }
  auto server = virtio::vhost_user::VhostUserServer::listen(socket, **backend);
  if (!server) return die(server.error());
  log_info("iovirt-vhost: serving " + what + " on " + socket);

  virtio::vhost_user::VhostUserServer* srv = server->get();
  std::thread signals([srv, set] {
    int sig = 0;
    sigwait(&set, &sig);
    srv->stop();
  });
  auto st = (*server)->run();
  srv->stop();
  pthread_kill(signals.native_handle(), SIGTERM);  // wakes sigwait when run() ended by itself
  signals.join();
  if (!st) return die(st.error());
  log_info("iovirt-vhost: stopped");
  return 0;
}

// SIGINT and SIGTERM go to serve()'s sigwait thread only: blocked before any thread starts.
sigset_t block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int run_blk(const iovirt::VhostBlkOptions& o) {
  using namespace iovirt;           // NOLINT
  using namespace iovirt::virtio;   // NOLINT
  const sigset_t set = block_stop_signals();
  MetricsRegistry metrics;
  BlkConfig cfg;
  cfg.path = o.file;
  cfg.readonly = o.readonly;
  cfg.direct = o.direct;
  cfg.io = virtio::parse_blk_io(o.io).value_or(virtio::BlkIo::Auto);
  cfg.queues = o.queues;
  cfg.queue_size = o.queue_size;
  cfg.serial = o.serial;
  cfg.poll_us = o.poll_us;
  auto dev = VirtioBlk::create(cfg, metrics, "blk0");
  if (!dev) return die(dev.error());
  return serve(**dev, metrics, o.socket, o.metrics, set, o.file + " as vhost-user-blk");
}

// The ports of --backend; nullptr factory for tap (the device opens the tap itself).
iovirt::Result<iovirt::virtio::PacketPortFactory> port_factory(const iovirt::VhostNetOptions& o,
                                                               std::string& name) {
  using namespace iovirt::virtio;  // NOLINT
  using iovirt::NetBackendKind;
  using iovirt::Result;
  switch (o.backend) {
    case NetBackendKind::Loopback:
      name = "ring-loopback";
      return PacketPortFactory([](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
        return make_loopback_port();
      });
    case NetBackendKind::Sink:
      name = "sink";
      return PacketPortFactory([](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
        return make_sink_port();
      });
    case NetBackendKind::Source: {
      name = "source of " + std::to_string(o.frame_len) + "-byte frames";
      const uint32_t len = o.frame_len;
      return PacketPortFactory([len](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
        return make_source_port(len);
      });
    }
    case NetBackendKind::Tap:
      name = "tap " + o.tap;
      return PacketPortFactory{};
    case NetBackendKind::Dpdk: {
      name = "dpdk " + o.dpdk;
      auto f = make_dpdk_port_factory(o.dpdk, o.queues);
      if (!f) return std::unexpected(std::move(f.error()).context("--backend dpdk"));
      return std::move(*f);
    }
  }
  return iovirt::fail("--backend: unknown kind");
}

int run_net(const iovirt::VhostNetOptions& o) {
  using namespace iovirt;           // NOLINT
  using namespace iovirt::virtio;   // NOLINT
  const sigset_t set = block_stop_signals();
  MetricsRegistry metrics;
  NetConfig cfg;
  auto factory = port_factory(o, cfg.port_name);
  if (!factory) return die(factory.error());
  cfg.port = std::move(*factory);
  cfg.tap = o.tap;
  cfg.mac = o.mac;
  cfg.queue_pairs = o.queues;
  cfg.queue_size = o.queue_size;
  cfg.poll_us = o.poll_us;
  cfg.poll_gap_ns = o.poll_gap_ns;
  cfg.frontend_owns_ctrl = true;  // vhost-user: the front-end serves the control queue
  auto dev = VirtioNet::create(cfg, metrics, "net0");
  if (!dev) return die(dev.error());
  const uint64_t hz = tsc_hz();
  metrics.gauge("iovirt_tsc_hz", "TSC ticks per second (the unit of the *_cycles_total counters)")
      .set(static_cast<int64_t>(hz));
  const int rc = serve(**dev, metrics, o.socket, o.metrics, set, "vhost-user-net (" + cfg.port_name + ")");
  // Totals per queue, for people and for scripts (the same figures as the Prometheus counters).
  for (uint16_t q = 0; q < 2 * o.queues; ++q) {
    const Labels l{{"device", "net0"}, {"queue", std::to_string(q)}};
    const uint64_t chains = metrics.counter("iovirt_virtio_queue_chains_total", "", l).value();
    const uint64_t bytes = metrics.counter("iovirt_virtio_queue_bytes_total", "", l).value();
    std::fprintf(stderr, "iovirt-vhost: net0 queue %u (%s%u): %llu chains, %llu bytes\n", q,
                 q % 2 == 0 ? "rx" : "tx", q / 2, static_cast<unsigned long long>(chains),
                 static_cast<unsigned long long>(bytes));
  }
  // The polling workers' busy time, in testpmd --record-core-cycles' terms: TSC cycles in rounds
  // that moved frames.
  for (uint16_t p = 0; p < (*dev)->net_metrics().workers.size(); ++p) {
    const NetMetrics::Worker& w = (*dev)->net_metrics().workers[p];
    std::fprintf(stderr, "iovirt-vhost: net0 pair %u worker: %llu busy cycles in %llu rounds at %llu MHz\n", p,
                 static_cast<unsigned long long>(w.busy_cycles->value()),
                 static_cast<unsigned long long>(w.busy_rounds->value()),
                 static_cast<unsigned long long>((hz + 500000) / 1000000));
  }
  std::fprintf(stderr, "iovirt-vhost: net0 tx dropped %llu, rx dropped %llu\n",
               static_cast<unsigned long long>((*dev)->net_metrics().tx_dropped->value()),
               static_cast<unsigned long long>((*dev)->net_metrics().rx_dropped->value()));
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto parsed = iovirt::parse_vhost_args(args);
  if (!parsed) {
    std::fprintf(stderr, "iovirt-vhost: %s\n", parsed.error().message().c_str());
    return 2;
  }
  switch (parsed->command) {
    case iovirt::VhostCommand::Help:
      std::fputs(iovirt::vhost_usage().c_str(), stdout);
      return 0;
    case iovirt::VhostCommand::Version:
      std::puts("iovirt-vhost " IOVIRT_VERSION);
      return 0;
    case iovirt::VhostCommand::Blk:
      return run_blk(parsed->blk);
    case iovirt::VhostCommand::Net:
      return run_net(parsed->net);
  }
  return 2;
}
