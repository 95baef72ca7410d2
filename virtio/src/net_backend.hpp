// Internal to the virtio-net device: the backends behind VirtioNet.
#pragma once

#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/packet_port.hpp"

namespace iovirt::virtio {

// A queue with its kick fd and counters, as one backend thread serves it.
struct ServedQueue {
  uint16_t index = 0;
  Virtqueue* q = nullptr;
  int kick_fd = -1;
  QueueMetrics* m = nullptr;
  bool dead = false;  // broken: ctx.fail was called, no longer served
};

// Serves every pending control request of `c` (section 5.1.6.5). Returns false when the queue
// broke (ctx.fail was called).
bool serve_ctrl_queue(const ActivateContext& ctx, ServedQueue& c, VirtioNet& dev,
                      const NetMetrics& nm, uint16_t max_pairs, bool mq);

// Decides on and sends the interrupt for queue `s` after a batch of pushes.
bool signal_used(const ActivateContext& ctx, ServedQueue& s);

struct PairQueues {
  std::optional<ServedQueue> rx;
  std::optional<ServedQueue> tx;
  int tap_fd = -1;
};

// One thread per queue pair; the control queue (if any) on the first pair's thread.
class TapBackend final {
 public:
  static Result<std::unique_ptr<TapBackend>> start(VirtioNet& dev, ActivateContext ctx,
                                                   std::vector<PairQueues> pairs,
                                                   std::optional<ServedQueue> ctrl,
                                                   const NetMetrics& nm, uint16_t max_pairs);
  ~TapBackend();
  TapBackend(const TapBackend&) = delete;
  TapBackend& operator=(const TapBackend&) = delete;
  // Stops and joins every thread; idempotent.
  void stop();

  struct Worker;

 private:
  explicit TapBackend(ActivateContext ctx);
  ActivateContext ctx_;  // the workers read it; outlives them
  std::vector<std::unique_ptr<Worker>> workers_;
};

// One thread per queue pair moving frames between the rings and a PacketPort of its own
// (net_port_backend.cpp); the control queue on the first pair's thread.
class PortBackend final {
 public:
  static Result<std::unique_ptr<PortBackend>> start(VirtioNet& dev, ActivateContext ctx,
                                                    std::vector<PairQueues> pairs,
                                                    std::vector<std::unique_ptr<PacketPort>> ports,
                                                    std::optional<ServedQueue> ctrl,
                                                    const NetMetrics& nm, uint16_t max_pairs,
                                                    uint32_t poll_us);
  ~PortBackend();
  PortBackend(const PortBackend&) = delete;
  PortBackend& operator=(const PortBackend&) = delete;
  void stop();

  struct Worker;

 private:
  explicit PortBackend(ActivateContext ctx);
  ActivateContext ctx_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace iovirt::virtio
