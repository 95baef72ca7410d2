// iovirt-vhost: the vhost-user back-end daemon. `iovirt-vhost blk --socket S --file F` serves
// iovirt's own VirtioBlk (io_uring, one thread per queue) to a vhost-user front-end through the
// VhostUserBackend transport (virtio/include/iovirt/virtio/vhost_user/backend.hpp).
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
#include "iovirt/virtio/blk.hpp"
#include "iovirt/virtio/vhost_user/backend.hpp"
#include "iovirt/vmm/vhost_cli.hpp"

namespace {

int die(const iovirt::Error& e) {
  std::fprintf(stderr, "iovirt-vhost: %s\n", e.message().c_str());
  return 1;
}

int run_blk(const iovirt::VhostBlkOptions& o) {
  using namespace iovirt;           // NOLINT
  using namespace iovirt::virtio;   // NOLINT
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread starts

  MetricsRegistry metrics;
  BlkConfig cfg;
  cfg.path = o.file;
  cfg.readonly = o.readonly;
  cfg.direct = o.direct;
  cfg.queues = o.queues;
  cfg.queue_size = o.queue_size;
  cfg.serial = o.serial;
  cfg.poll_us = o.poll_us;
  auto dev = VirtioBlk::create(cfg, metrics, "blk0");
  if (!dev) return die(dev.error());
  auto backend = vhost_user::VhostUserBackend::create(**dev, metrics);
  if (!backend) return die(backend.error());
  std::unique_ptr<MetricsServer> http;
  if (!o.metrics.empty()) {
    auto m = MetricsServer::start(metrics, o.metrics);
    if (!m) return die(m.error());
    http = std::move(*m);
  }
  auto server = vhost_user::VhostUserServer::listen(o.socket, **backend);
  if (!server) return die(server.error());
  log_info("iovirt-vhost: serving " + o.file + " as vhost-user-blk on " + o.socket);

  vhost_user::VhostUserServer* srv = server->get();
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
      break;
  }
  return run_blk(parsed->blk);
}
