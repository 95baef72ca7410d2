// Internal to the virtio-net device: the backends behind VirtioNet.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string_view>
#include <optional>
#include <thread>
#include <vector>

#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/packet_port.hpp"

namespace iovirt::virtio {

// epoll tags of a pair worker's fds (tap and port backends).
inline constexpr uint32_t kTagStop = 0;
inline constexpr uint32_t kTagTxKick = 1;
inline constexpr uint32_t kTagRxKick = 2;
inline constexpr uint32_t kTagFrames = 3;  // the tap queue fd, or a port's rx_wake() fd
inline constexpr uint32_t kTagCtrlKick = 4;

// Consumes an eventfd's count; true when there was one.
inline bool drain_eventfd(int fd) {
  uint64_t v = 0;
  return ::read(fd, &v, sizeof v) == static_cast<ssize_t>(sizeof v);
}

// Adds fd to a pair worker's epoll set with `tag` as its data.
inline Status epoll_add_tagged(int ep, int fd, uint32_t tag, uint32_t events = EPOLLIN) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u32 = tag;
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    return fail_errno("virtio-net: epoll_ctl add fd " + std::to_string(fd));
  }
  return {};
}

// A queue with its kick fd and counters, as one backend thread serves it.
struct ServedQueue {
  uint16_t index = 0;
  Virtqueue* q = nullptr;
  int kick_fd = -1;
  QueueMetrics* m = nullptr;
  bool dead = false;  // broken: ctx.fail was called, no longer served
};

// Serves every pending control request of `c` (section 5.1.6.5); an accepted VQ_PAIRS_SET is
// passed to `set_pairs`. `name` leads log lines. Returns false when the queue broke (ctx.fail
// was called).
using SetPairs = std::function<void(uint16_t)>;
bool serve_ctrl_queue(const ActivateContext& ctx, ServedQueue& c, std::string_view name,
                      const SetPairs& set_pairs, const NetMetrics& nm, uint16_t max_pairs, bool mq);

// Decides on and sends the interrupt for queue `s` after a batch of pushes.
bool signal_used(const ActivateContext& ctx, ServedQueue& s);

// Chains popped from an rx queue and not filled yet, with their writable segments as host
// iovecs. A frame fills the first chains in order, each before the next (section 5.1.6.4);
// chains are popped once however many frames pass. Shared by the tap and port backends.
class RxChainCache {
 public:
  // max_segs: refill() stops once this many segments are cached (the tap's readv takes
  // IOV_MAX); chain_max_segs: the most one chain can have (queue size + indirect entries).
  RxChainCache(size_t max_chains, size_t max_segs, size_t chain_max_segs);

  // VIRTIO_F_IN_ORDER negotiated: chains must go back in the order they were taken, so a chain
  // without room for the header cannot be returned ahead of cached ones (the queue fails).
  void set_in_order(bool on) { in_order_ = on; }
  // Buffers taken a burst at a time get their first `n` bytes prefetched for writing (see
  // SplitQueue::pop_direct()), so the burst's frames go into lines already held; 0: none.
  void set_prefetch(uint32_t n) { prefetch_ = n; }
  // Chains that are one writable buffer each are taken a burst at a time (pop_direct) while more
  // than one chain may be cached (MRG_RXBUF): the extra ones serve the frames that follow.
  static constexpr size_t kBatch = 32;

  // Pops chains while fewer than `chains_limit` are cached and fewer than `need` bytes (at least
  // one chain). A chain without room for a virtio_net_hdr goes back unused (`returned_unused`,
  // counted in nm.rx_bad_chains). An error: the queue broke.
  Status refill(const GuestMemory& mem, Virtqueue& q, const NetMetrics& nm, size_t chains_limit,
                uint64_t need, bool& returned_unused);
  [[nodiscard]] uint64_t bytes() const { return bytes_; }
  [[nodiscard]] size_t chains() const { return nchains_; }
  [[nodiscard]] size_t segs() const { return nsegs_; }
  [[nodiscard]] const iovec* iov() const { return segs_.data() + seg0_; }
  // No more chains fit (a frame that does not fit now never will).
  [[nodiscard]] bool capped(size_t chains_limit) const {
    return nchains_ >= chains_limit || nsegs_ >= max_segs_;
  }
  // Copies len bytes to byte `off` of the cached buffers (in chain order).
  void write(size_t off, const void* src, size_t len) const;
  // Returns the first chains that hold n bytes to the driver (publication deferred) after
  // writing num_buffers into the first one's header; counts them in `chains_used`.
  Status give(const GuestMemory& mem, Virtqueue& q, uint64_t n, uint64_t& chains_used);
  // The common case without the walks, for a run of frames one per chain: the i-th cached
  // chain's buffer when it is one segment of at least n bytes, else nullptr. The caller writes
  // the whole frames (num_buffers = 1 included), then give_firsts() returns the first
  // written.size() chains, chain i with written[i] bytes.
  [[nodiscard]] uint8_t* buffer_if_fits(size_t i, uint64_t n) const {
    if (i >= nchains_) return nullptr;
    const Chain& c = chains_[chain0_ + i];
    // Chain i's segment is segment i while chains 0..i-1 are one segment each: the caller asks
    // for i = 0, 1, ... and stops at the first nullptr.
    if (c.nseg != 1 || segs_[seg0_ + i].iov_len < n) return nullptr;
    return static_cast<uint8_t*>(segs_[seg0_ + i].iov_base);
  }
  Status give_firsts(const GuestMemory& mem, Virtqueue& q, std::span<const uint32_t> written);

 private:
  struct Chain {
    uint16_t head;
    uint16_t desc_count;
    uint32_t wlen;
    uint32_t nseg;
  };
  void drop_front(size_t k);
  // Moves the cached entries to the front of their arrays (they are consumed from the front by
  // advancing chain0_/seg0_, and appended at the back).
  void compact();
  // A popped chain: cached, or returned unused when it has no room for the header.
  Status take(const GuestMemory& mem, Virtqueue& q, const NetMetrics& nm, uint16_t head,
              uint16_t desc_count, uint32_t writable_len, std::span<const Segment> segs,
              bool& returned_unused);
  Status refill_batch(const GuestMemory& mem, Virtqueue& q, const NetMetrics& nm, size_t room,
                      bool& returned_unused, bool& more);

  std::vector<Chain> chains_;  // [chain0_, chain0_ + nchains_)
  size_t chain0_ = 0;
  size_t nchains_ = 0;
  size_t max_chains_;
  std::vector<iovec> segs_;  // [seg0_, seg0_ + nsegs_)
  size_t seg0_ = 0;
  size_t nsegs_ = 0;
  size_t max_segs_;
  uint64_t bytes_ = 0;
  bool in_order_ = false;
  uint32_t prefetch_ = 0;
  std::array<DirectChain, kBatch> direct_{};
};

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
                                                    uint32_t poll_us, uint32_t poll_gap_ns);
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
