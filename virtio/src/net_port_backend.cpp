// The packet-port backend of virtio-net (NetConfig::port): one thread per queue pair moving
// frames between the virtqueues and a PacketPort (packet_port.hpp), the data path of
// `iovirt-vhost net`.
//
// TX (section 5.1.6.2): the frame's bytes after the virtio_net_hdr are copied out of guest
// memory into a port buffer (the header itself asks nothing of a port: no offload is offered)
// and the chain is returned; buffers go to the port in bursts of up to kBurst, and one-buffer
// chains are popped a burst at a time (SplitQueue::pop_direct).
// RX (section 5.1.6.3): frames from the port are copied into the guest's writable buffers behind
// a zeroed virtio_net_hdr_v1 whose num_buffers the device fills; with VIRTIO_NET_F_MRG_RXBUF a
// frame may span several chains. Chains popped but not yet filled wait in a small cache, and
// frames the guest has no room for yet wait in the burst they came in (the port is not asked for
// more meanwhile), so a slow refill costs a wait, never a frame.
//
// Polling: driver notifications stay disabled while the worker runs; after a round without work
// it busy-polls for poll_us, then re-enables notifications race-free (enable, re-check) and
// sleeps in epoll on the kicks. A port whose frames arrive with no fd (a NIC PMD) is polled for
// ever, as DPDK itself does. With a poll gap (NetConfig::poll_gap_ns), once the busy rounds since
// the last empty one have moved a burst or more, the empty rounds after them are each followed by
// that long spinning on PAUSE without touching the rings or the port; after a run that moved
// fewer, there is no gap: a stream is taken in larger batches, a frame at a time is still polled
// back to back. Interrupts are decided once per burst (needs_notification).
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "iovirt/core/log.hpp"
#include "iovirt/core/tsc.hpp"
#include "net_backend.hpp"

namespace iovirt::virtio {

namespace {

constexpr uint32_t kBurst = 32;
constexpr unsigned kTxBursts = 8;    // bursts per round before rx gets a turn
constexpr size_t kMaxRxChains = 64;  // one frame may span this many chains (MRG_RXBUF)
constexpr unsigned kIdleEventCheck = 1024;  // polling rounds between looks at the control kick
constexpr unsigned kClockEvery = 32;        // idle rounds between looks at the clock
constexpr unsigned kFlushRounds = 256;      // busy rounds between updates of the cycle counters

using Clock = std::chrono::steady_clock;

// The header of a frame in one buffer with nothing offloaded (num_buffers 1, little-endian).
constexpr VirtioNetHdr kOneBufferHdr{0, 0, 0, 0, 0, 0, 1};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

struct PortBackend::Worker {
  VirtioNet* dev = nullptr;
  const ActivateContext* ctx = nullptr;
  const NetMetrics* nm = nullptr;
  std::unique_ptr<PacketPort> port;
  PairQueues pq;
  std::optional<ServedQueue> ctrl;
  uint16_t max_pairs = 1;
  uint16_t pair = 0;
  bool mrg = false;
  bool mq = false;
  Clock::duration poll_window{};
  uint64_t gap_cycles = 0;  // TSC cycles between empty polling rounds (0: none)
  // Frames moved (tx taken + rx delivered) since the last empty round, held at kBurst at most
  // once a round ends: whether the gap applies (poll_gap_ns).
  uint32_t run_frames = 0;
  int port_wake = PacketPort::kRxAfterTransmit;
  std::atomic<bool> stopping{false};
  EventFd stop_fd;
  Fd ep;
  std::thread thread;
  bool warned_tx = false;

  // Busy-cycle accounting, kept here and added to the counters (locked adds) when the worker goes
  // idle and every kFlushRounds busy rounds.
  const NetMetrics::Worker* wm = nullptr;
  uint64_t busy_cycles = 0;
  uint64_t busy_rounds = 0;

  // TX: port buffers allocated ahead (tx_free) and the burst being filled (tx_out).
  std::array<PacketBuf, kBurst> tx_free{};
  uint32_t tx_nfree = 0;
  std::array<PacketBuf, kBurst> tx_out{};

  // RX: frames received from the port, [rx_pos, rx_n) not yet delivered.
  std::array<PacketBuf, kBurst> rx_frames{};
  uint32_t rx_n = 0;
  uint32_t rx_pos = 0;
  bool rx_waiting = false;  // out of guest buffers: sleeping needs the rx kick

  std::optional<RxChainCache> rxc;  // popped rx chains not filled yet

  explicit Worker(EventFd s) : stop_fd(std::move(s)) {}

  void fail_queue(ServedQueue& s, const std::string& why) {
    if (s.dead) return;
    s.dead = true;
    ctx->fail(std::string(dev->name()) + ": queue " + std::to_string(s.index) + ": " + why);
    if (s.kick_fd >= 0) (void)::epoll_ctl(ep.get(), EPOLL_CTL_DEL, s.kick_fd, nullptr);
  }

  [[nodiscard]] bool tx_live() const { return pq.tx && !pq.tx->dead; }
  [[nodiscard]] bool rx_live() const { return pq.rx && !pq.rx->dead; }

  // ---- TX ----
  void drop_tx(TxDrop why) {
    nm->tx_dropped->inc();
    if (!warned_tx) {
      warned_tx = true;
      log_warn(std::string(dev->name()) + ": TX frame dropped: " + to_string(why) +
               " (further drops are only counted)");
    }
  }

  // One popped chain waiting for phase 2 of a burst: its segments (copied: a chain's segment
  // list lives only until the next pop), or for a chain of one readable buffer its host address.
  static constexpr size_t kInlineSegs = 4;
  struct TxItem {
    uint16_t head;
    uint16_t desc_count;
    uint8_t nseg;
    const uint8_t* host;  // non-null: segs[0] is one readable buffer, here (the fast path)
    std::array<Segment, kInlineSegs> segs;
  };
  std::array<TxItem, kBurst> tx_items{};
  std::array<DirectChain, kBurst> tx_direct{};

  // Returns a chain of the burst (publication deferred to the burst's end). Chains are returned
  // in the order they were popped, as VIRTIO_F_IN_ORDER requires.
  bool tx_return(ServedQueue& s, uint16_t head, uint16_t desc_count) {
    if (auto st = s.q->push_deferred(*ctx->mem, head, desc_count, 0); !st) {
      fail_queue(s, st.error().message());
      return false;
    }
    return true;
  }

  // Takes a port buffer for a frame of `len` bytes, or counts the drop (false).
  bool tx_take(uint64_t len, PacketBuf& b) {
    if (len > port->max_frame()) {
      drop_tx(TxDrop::TooLong);
      return false;
    }
    if (tx_nfree == 0) tx_nfree = port->alloc(std::span(tx_free.data(), kBurst));
    if (tx_nfree == 0) {
      nm->tx_dropped->inc();  // the port is out of buffers: the frame is lost, as on a NIC
      return false;
    }
    b = tx_free[--tx_nfree];
    return true;
  }

  // Copies one frame into a port buffer (queued in tx_out). Its virtio_net_hdr is not read: a
  // port is offered no offload, so no field of it asks anything of the device (flags it did not
  // offer are ignored, section 5.1.6.2.2), and the port takes plain frames. Not reading it
  // saves the line it sits in, which the driver has just written on another CPU (DPDK's vhost
  // skips it too). Only the length is checked.
  void tx_copy(std::span<const Segment> segs, uint32_t& nout, uint64_t& bytes) {
    uint64_t readable = 0;
    for (const Segment& sg : segs) {
      if (!sg.write) readable += sg.len;  // writable parts of a TX chain are ignored
    }
    if (readable < kNetHdrSize) {
      drop_tx(TxDrop::ShortHeader);
      return;
    }
    const uint64_t frame_len = readable - kNetHdrSize;
    PacketBuf b;
    if (!tx_take(frame_len, b)) return;
    // Copied out of guest memory into the port's own buffer: the port never sees guest memory,
    // and the guest may reuse the chain as soon as it is returned.
    const auto len = static_cast<uint32_t>(frame_len);
    if (gather_chain(*ctx->mem, segs, false, kNetHdrSize, std::span(b.data, len))) {
      b.len = len;
      tx_out[nout++] = b;
      bytes += len;
    } else {
      nm->tx_dropped->inc();
      tx_free[tx_nfree++] = b;
    }
  }

  // The same for a frame in one readable buffer of `len` bytes (header included) at `p`,
  // already inside guest memory (pop_direct checked it).
  void tx_copy_one(const uint8_t* p, uint32_t len, uint32_t& nout, uint64_t& bytes) {
    if (len < kNetHdrSize) {
      drop_tx(TxDrop::ShortHeader);
      return;
    }
    const uint32_t frame_len = len - kNetHdrSize;
    PacketBuf b;
    if (!tx_take(frame_len, b)) return;
    std::memcpy(b.data, p + kNetHdrSize, frame_len);
    b.len = frame_len;
    tx_out[nout++] = b;
    bytes += frame_len;
  }

  // One burst in two phases, as DPDK's vhost dequeue does it: pop up to kBurst chains (a run of
  // one-descriptor chains at once, pop_direct) and prefetch their buffers, then check and copy
  // each, then return them all, so the cache misses on the driver's fresh descriptors and
  // buffers overlap instead of queueing one behind the other. Returns the chains completed, or
  // -1 when the queue broke.
  int tx_burst() {
    ServedQueue& s = *pq.tx;
    const GuestMemory& mem = *ctx->mem;
    uint32_t nout = 0;
    uint64_t bytes = 0;
    size_t nitems = 0;
    int done = 0;
    auto direct = s.q->pop_direct(mem, std::span(tx_direct.data(), kBurst), kNetHdrSize);
    if (!direct) {
      fail_queue(s, direct.error().message());
      return -1;
    }
    for (uint32_t i = 0; i < direct->count; ++i) {
      const DirectChain& c = tx_direct[i];
      TxItem& it = tx_items[nitems++];
      it.head = c.head;
      it.desc_count = 1;
      it.nseg = 1;
      it.segs[0] = c.seg;
      it.host = c.seg.write ? nullptr : c.host;  // no readable bytes: tx_copy drops it
    }
    done = static_cast<int>(direct->count);
    const bool more = direct->blocked;
    while (more && done < static_cast<int>(kBurst)) {
      auto chain = s.q->pop(mem);
      if (!chain) {
        fail_queue(s, chain.error().message());
        return -1;
      }
      if (!*chain) break;
      const DescriptorChain& c = **chain;
      ++done;
      if (c.segments.size() > kInlineSegs) {  // rare: handled at once
        // The items before it are returned first (VIRTIO_F_IN_ORDER): copy them now too.
        if (!tx_finish(s, nitems, nout, bytes)) return -1;
        nitems = 0;
        tx_copy(c.segments, nout, bytes);
        if (!tx_return(s, c.head, c.desc_count)) return -1;
        continue;
      }
      TxItem& it = tx_items[nitems++];
      it.head = c.head;
      it.desc_count = c.desc_count;
      it.nseg = static_cast<uint8_t>(c.segments.size());
      it.host = nullptr;
      std::copy(c.segments.begin(), c.segments.end(), it.segs.begin());
      for (const Segment& seg : c.segments) {  // first and last line of each
        if (seg.len == 0 || seg.write) continue;
        if (auto sp = mem.span(seg.addr, seg.len)) {
          __builtin_prefetch(sp->data());
          __builtin_prefetch(sp->data() + std::min<size_t>(sp->size() - 1, 127));
        }
      }
    }
    if (!tx_finish(s, nitems, nout, bytes)) return -1;
    if (nout > 0) port->transmit(std::span(tx_out.data(), nout));
    if (done > 0) {
      s.m->chains->inc(static_cast<uint64_t>(done));
      s.m->bytes->inc(bytes);
      if (!signal_used(*ctx, s)) {
        fail_queue(s, "used ring access failed");
        return -1;
      }
    }
    return done;
  }

  // Phase 2 of a burst: copies the first n items, then returns them in order.
  bool tx_finish(ServedQueue& s, size_t n, uint32_t& nout, uint64_t& bytes) {
    for (size_t i = 0; i < n; ++i) {
      const TxItem& it = tx_items[i];
      if (it.host != nullptr) {
        tx_copy_one(it.host, it.segs[0].len, nout, bytes);
      } else {
        tx_copy(std::span<const Segment>(it.segs.data(), it.nseg), nout, bytes);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      if (!tx_return(s, tx_items[i].head, tx_items[i].desc_count)) return false;
    }
    return true;
  }

  bool tx_round() {
    bool work = false;
    for (unsigned i = 0; i < kTxBursts && tx_live(); ++i) {
      const int n = tx_burst();
      if (n > 0) {
        work = true;
        run_frames += static_cast<uint32_t>(n);
      }
      if (n < static_cast<int>(kBurst)) break;
    }
    return work;
  }

  // ---- RX ----
  [[nodiscard]] size_t rx_chains_limit() const { return mrg ? kMaxRxChains : 1; }

  // A frame and its header into one buffer `p` that holds both.
  static void copy_one_buffer(uint8_t* p, const PacketBuf& f) {
    // The header is stored only where it differs from what the buffer holds: a driver that
    // recycles its buffers finds the same header there each time, and not writing it leaves
    // the line shared with the driver's CPU instead of taking it away and handing it back
    // per frame (DPDK's vhost does the same).
    // The expected header is a constant: one built on the stack per frame had its 2-byte
    // num_buffers store feed the comparison's 4-byte load, which the store buffer cannot
    // forward, so every frame waited for that store to commit (rx went from 22-23 to 26.7
    // Mpps without it).
    if (std::memcmp(p, &kOneBufferHdr, kNetHdrSize) != 0)
      std::memcpy(p, &kOneBufferHdr, kNetHdrSize);
    std::memcpy(p + kNetHdrSize, f.data, f.len);
  }

  // Copies one frame that the first cached chain does not hold alone (MRG_RXBUF spans chains;
  // a chain of several buffers) behind a fresh header into the first cached chains and returns
  // them; counts them in `chains` (the metric is bumped once per burst: a locked add per frame
  // would wait for every store into the guest's buffers before it). A frame that one buffer
  // holds goes through rx_deliver_run().
  bool rx_deliver(ServedQueue& s, const PacketBuf& f, uint64_t& chains) {
    const VirtioNetHdr hdr{};  // num_buffers is filled by give()
    rxc->write(0, &hdr, kNetHdrSize);
    rxc->write(kNetHdrSize, f.data, f.len);
    if (auto st = rxc->give(*ctx->mem, *s.q, kNetHdrSize + uint64_t{f.len}, chains); !st) {
      fail_queue(s, st.error().message());
      return false;
    }
    return true;
  }

  // Frames [rx_pos, ...) that each fit in one cached chain, in the order cached: all copied
  // first, then all their chains returned. A store into a guest buffer's line still waits for
  // that line to come over from the driver's CPU (PREFETCHW at pop time notwithstanding: one
  // 8-byte store into the frame's line cost ~65 cycles per frame in io-forward), and stores leave
  // the store buffer in order: with each frame's return bookkeeping (a dozen local stores)
  // between them, only two or three such lines were on their way at once. Back to back, the
  // store buffer holds a burst's worth (virtio-user on an EPYC, packed/split Mpps: rx-only
  // 22.7 -> 27.3 / 27.0 -> 33.3, io-forward 10.9 -> 14.1 / 14.3 -> 16.3). Returns how many
  // went (rx_pos advanced), UINT32_MAX when the queue broke.
  uint32_t rx_deliver_run(ServedQueue& s, uint64_t& bytes) {
    std::array<uint32_t, kBurst> written;
    uint32_t k = 0;
    while (rx_pos + k < rx_n) {
      const PacketBuf& f = rx_frames[rx_pos + k];
      const uint32_t need = kNetHdrSize + f.len;
      uint8_t* p = rxc->buffer_if_fits(k, need);
      if (p == nullptr) break;
      copy_one_buffer(p, f);
      written[k++] = need;
      bytes += f.len;
    }
    if (k == 0) return 0;
    if (auto st = rxc->give_firsts(*ctx->mem, *s.q, std::span(written.data(), k)); !st) {
      fail_queue(s, st.error().message());
      return UINT32_MAX;
    }
    rx_pos += k;
    return k;
  }

  // Returns true when it did something (frames delivered or taken from the port).
  bool rx_round() {
    ServedQueue& s = *pq.rx;
    bool pushed = false;
    bool work = false;
    uint64_t bytes = 0;
    uint64_t chains = 0;
    if (rx_pos == rx_n) {
      rx_pos = rx_n = 0;
      rx_n = port->receive(std::span(rx_frames.data(), kBurst));
      if (rx_n == 0) return false;
      work = true;
    }
    const uint32_t first = rx_pos;
    while (rx_pos < rx_n) {
      const PacketBuf& f = rx_frames[rx_pos];
      const uint64_t need = kNetHdrSize + uint64_t{f.len};
      if (const uint32_t k = rx_deliver_run(s, bytes); k > 0) {
        if (k == UINT32_MAX) return true;
        chains += k;
        work = true;
        continue;
      }
      if (rxc->chains() == 0 || rxc->bytes() < need) {  // else the cache holds it already
        if (auto st = rxc->refill(*ctx->mem, *s.q, *nm, rx_chains_limit(), need, pushed); !st) {
          fail_queue(s, st.error().message());
          return true;
        }
        if (rxc->buffer_if_fits(0, need) != nullptr) continue;  // rx_deliver_run() takes it
      }
      if (rxc->bytes() < need) {
        if (!rxc->capped(rx_chains_limit())) {
          rx_waiting = true;  // the guest has too few buffers now: wait for more
          break;
        }
        nm->rx_dropped->inc();  // larger than every buffer the device can hold at once
        ++rx_pos;
        continue;
      }
      if (!rx_deliver(s, f, chains)) return true;
      bytes += f.len;
      ++rx_pos;
      work = true;
    }
    if (rx_pos > first) port->release(std::span(rx_frames.data() + first, rx_pos - first));
    run_frames += rx_pos - first;
    if (rx_pos == rx_n) rx_waiting = false;
    s.m->chains->inc(chains);
    s.m->bytes->inc(bytes);
    if ((work || pushed) && !signal_used(*ctx, s)) fail_queue(s, "used ring access failed");
    return work;
  }

  // ---- the loop ----
  void serve_ctrl() {
    if (ctrl && !ctrl->dead && !serve_ctrl_queue(*ctx, *ctrl, dev->name(), [d = dev](uint16_t n) { d->set_active_pairs(n); }, *nm,
                                                   max_pairs, mq)) {
      ctrl->dead = true;
      (void)::epoll_ctl(ep.get(), EPOLL_CTL_DEL, ctrl->kick_fd, nullptr);
    }
  }

  // Handles ready events; returns false on stop.
  bool handle_events(int timeout_ms) {
    epoll_event evs[8];
    const int n = ::epoll_wait(ep.get(), evs, 8, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) return true;
      ctx->fail(std::string("epoll_wait: ") + std::strerror(errno));
      return false;
    }
    for (int i = 0; i < n; ++i) {
      switch (evs[i].data.u32) {
        case kTagStop:
          return false;
        case kTagTxKick:
          if (drain_eventfd(pq.tx->kick_fd)) pq.tx->m->kicks->inc();
          break;
        case kTagRxKick:
          if (drain_eventfd(pq.rx->kick_fd)) pq.rx->m->kicks->inc();
          break;
        case kTagCtrlKick:
          if (drain_eventfd(ctrl->kick_fd)) ctrl->m->kicks->inc();
          serve_ctrl();
          break;
        default:
          break;  // the port's fd: the next round receives
      }
    }
    return true;
  }

  // Re-enables the notifications a sleep depends on; false when work slipped in meanwhile (the
  // race-free order of section 2.7.10: enable, then look again).
  bool arm_for_sleep() {
    const GuestMemory& mem = *ctx->mem;
    if (tx_live()) {
      auto more = pq.tx->q->enable_notification(mem);
      if (!more) {
        fail_queue(*pq.tx, more.error().message());
      } else if (*more) {
        return false;
      }
    }
    if (rx_live() && rx_waiting) {
      auto more = pq.rx->q->enable_notification(mem);
      if (!more) {
        fail_queue(*pq.rx, more.error().message());
      } else if (*more) {
        return false;
      }
    }
    // A generator always has frames: it waits for guest buffers only.
    return true;
  }

  void quiet_notifications() {
    const GuestMemory& mem = *ctx->mem;
    if (tx_live()) {
      if (auto st = pq.tx->q->disable_notification(mem); !st) fail_queue(*pq.tx, st.error().message());
    }
    if (rx_live()) {
      if (auto st = pq.rx->q->disable_notification(mem); !st) fail_queue(*pq.rx, st.error().message());
    }
  }

  void run() {
    std::string tname(dev->name());
    tname += "-p";
    tname += std::to_string(pair);
    tname.resize(std::min<size_t>(tname.size(), 15));
    pthread_setname_np(pthread_self(), tname.c_str());

    serve_ctrl();  // requests queued before the thread started
    quiet_notifications();
    auto idle_since = Clock::now();
    const unsigned event_every = gap_cycles == 0 ? kIdleEventCheck : 16;
    const unsigned clock_every = gap_cycles == 0 ? kClockEvery : 1;
    unsigned idle_rounds = 0;  // rounds without work since the last work (no clock read per round)
    bool heavy = false;        // that run of busy rounds moved a burst or more: gaps apply
    uint64_t t0 = tsc_now();  // the round's start: the last busy round's end, or read afresh
    while (!stopping.load(std::memory_order_relaxed)) {
      if (idle_rounds != 0) t0 = tsc_now();
      bool work = false;
      if (tx_live()) work = tx_round();
      if (rx_live()) work = rx_round() || work;
      if (work) {
        run_frames = std::min(run_frames, kBurst);
        const uint64_t t1 = tsc_now();
        busy_cycles += t1 - t0;
        t0 = t1;
        if (++busy_rounds == kFlushRounds) flush_cycles();
        idle_rounds = 0;
        continue;
      }
      if (++idle_rounds == 1) {
        idle_since = Clock::now();
        flush_cycles();
        heavy = run_frames >= kBurst;
        run_frames = 0;
      }
      // Idle. A control kick or a stop is looked for now and then without sleeping (rounds
      // separated by a gap are few, so then more often in rounds: at most 16 gaps apart).
      if (idle_rounds % event_every == 0 && !handle_events(0)) return;
      const bool polled_port = port_wake == PacketPort::kRxPolled && rx_live() && !rx_waiting;
      const bool in_window = poll_window > Clock::duration::zero() &&
                             (idle_rounds % clock_every != 0 || Clock::now() - idle_since < poll_window);
      if (polled_port || in_window) {
        if (gap_cycles == 0 || !heavy) {
          cpu_relax();
        } else {
          const uint64_t until = tsc_now() + gap_cycles;
          do cpu_relax();
          while (tsc_now() < until);
        }
        continue;
      }
      if (!arm_for_sleep()) {
        quiet_notifications();
        continue;
      }
      if (!handle_events(-1)) return;
      quiet_notifications();
      idle_rounds = 0;
      t0 = tsc_now();
    }
  }

  void flush_cycles() {
    if (wm != nullptr && busy_rounds != 0) {
      wm->busy_cycles->inc(busy_cycles);
      wm->busy_rounds->inc(busy_rounds);
    }
    busy_cycles = busy_rounds = 0;
  }

  void release_all() {
    flush_cycles();
    if (tx_nfree > 0) port->release(std::span(tx_free.data(), tx_nfree));
    tx_nfree = 0;
    if (rx_pos < rx_n) port->release(std::span(rx_frames.data() + rx_pos, rx_n - rx_pos));
    rx_pos = rx_n = 0;
  }
};

Result<std::unique_ptr<PortBackend>> PortBackend::start(VirtioNet& dev, ActivateContext ctx,
                                                        std::vector<PairQueues> pairs,
                                                        std::vector<std::unique_ptr<PacketPort>> ports,
                                                        std::optional<ServedQueue> ctrl,
                                                        const NetMetrics& nm, uint16_t max_pairs,
                                                        uint32_t poll_us, uint32_t poll_gap_ns) {
  std::unique_ptr<PortBackend> b(new PortBackend(std::move(ctx)));
  const bool mrg = has(b->ctx_.features, net_feature::kMrgRxbuf);
  const bool mq = has(b->ctx_.features, net_feature::kMq);
  for (size_t p = 0; p < pairs.size(); ++p) {
    auto stop = EventFd::create();
    if (!stop) return std::unexpected(std::move(stop.error()).context("virtio-net stop eventfd"));
    auto w = std::make_unique<Worker>(std::move(*stop));
    w->dev = &dev;
    w->ctx = &b->ctx_;
    w->nm = &nm;
    if (p < nm.workers.size()) w->wm = &nm.workers[p];
    w->port = std::move(ports[p]);
    w->pq = pairs[p];
    w->pair = static_cast<uint16_t>(p);
    w->max_pairs = max_pairs;
    w->mrg = mrg;
    w->mq = mq;
    w->poll_window = std::chrono::microseconds(poll_us);
    if (poll_gap_ns != 0) w->gap_cycles = std::max<uint64_t>(1, tsc_hz() / 1000 * poll_gap_ns / 1'000'000);
    w->port_wake = w->port->rx_wake();
    if (p == 0) w->ctrl = ctrl;
    uint32_t qmax = 0;
    if (w->pq.rx) qmax = w->pq.rx->q->max_size();
    w->rxc.emplace(kMaxRxChains, 1024, qmax + SplitQueue::kMaxIndirectEntries);
    w->rxc->set_in_order(has(b->ctx_.features, VIRTIO_F_IN_ORDER));
    // The header and a minimum-size frame behind it: the lines every frame writes (a longer
    // frame's copy streams on from there).
    w->rxc->set_prefetch(kNetHdrSize + 64);

    w->ep = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!w->ep) return fail_errno("virtio-net: epoll_create1");
    auto add = [&](int fd, uint32_t tag) { return epoll_add_tagged(w->ep.get(), fd, tag); };
    Status st = add(w->stop_fd.fd(), kTagStop);
    if (st && w->pq.tx) st = add(w->pq.tx->kick_fd, kTagTxKick);
    if (st && w->pq.rx) st = add(w->pq.rx->kick_fd, kTagRxKick);
    if (st && w->port_wake >= 0) st = add(w->port_wake, kTagFrames);
    if (st && w->ctrl) st = add(w->ctrl->kick_fd, kTagCtrlKick);
    if (!st) return std::unexpected(st.error());
    b->workers_.push_back(std::move(w));
  }
  for (auto& w : b->workers_) {
    Worker* raw = w.get();
    w->thread = std::thread([raw] { raw->run(); });
  }
  return b;
}

PortBackend::PortBackend(ActivateContext ctx) : ctx_(std::move(ctx)) {}

void PortBackend::stop() {
  for (auto& w : workers_) {
    if (w->thread.joinable()) {
      w->stopping.store(true);
      (void)w->stop_fd.write();
      w->thread.join();
      w->release_all();
    }
  }
}

PortBackend::~PortBackend() {
  stop();
}

}  // namespace iovirt::virtio
