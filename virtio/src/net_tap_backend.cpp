// The tap backend of virtio-net: one thread per queue pair, each with its own epoll set over
// {stop eventfd, tx kick, rx kick, tap queue fd (while the rx queue has buffers), ctrl kick}.
//
// TX (section 5.1.6.2): each chain is [virtio_net_hdr_v1 | frame] in device-readable buffers;
// after check_tx_chain() the readable segments go to the tap with one writev straight from guest
// memory. RX (section 5.1.6.3): frames are read with readv straight into the guest's writable
// buffers; with VIRTIO_NET_F_MRG_RXBUF a frame may fill several chains (num_buffers in the first
// header). Chains taken from the rx ring wait in a small cache until a frame fills them, so a
// chain is popped once however many frames pass. When the rx ring is empty the thread stops
// polling the tap and asks for a kick instead (no busy loop). Interrupts are decided once per
// batch (needs_notification).
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "iovirt/core/log.hpp"
#include "net_backend.hpp"

namespace iovirt::virtio {

namespace {

constexpr unsigned kTxBudget = 256;  // chains per round before the other queues get a turn
constexpr unsigned kRxBudget = 64;   // frames per round
constexpr size_t kMaxRxChains = 256;

}  // namespace

bool signal_used(const ActivateContext& ctx, ServedQueue& s) {
  auto n = s.q->needs_notification(*ctx.mem);
  if (!n) return false;
  if (*n) {
    ctx.irq->notify_queue(s.index);
    s.m->interrupts->inc();
  } else {
    s.m->suppressed->inc();
  }
  return true;
}

bool serve_ctrl_queue(const ActivateContext& ctx, ServedQueue& c, std::string_view name,
                      const SetPairs& set_pairs, const NetMetrics& nm, uint16_t max_pairs, bool mq) {
  const GuestMemory& mem = *ctx.mem;
  bool pushed = false;
  // Bounded by the queue size: each pop consumes one avail entry.
  for (uint32_t i = 0; i <= c.q->size(); ++i) {
    auto chain = c.q->pop(mem);
    if (!chain) {
      ctx.fail(std::string(name) + ": control queue: " + chain.error().message());
      return false;
    }
    if (!*chain) break;
    const CtrlResult r = handle_ctrl_chain(mem, (*chain)->segments, max_pairs, mq);
    nm.ctrl_commands->inc();
    if (r.ack != VIRTIO_NET_OK) nm.ctrl_errors->inc();
    if (r.written == 0) {
      log_warn(std::string(name) + ": control request without a writable ack byte ignored");
    }
    if (r.set_pairs) set_pairs(*r.set_pairs);
    if (auto st = c.q->push(mem, **chain, r.written); !st) {
      ctx.fail(std::string(name) + ": control queue: " + st.error().message());
      return false;
    }
    c.m->chains->inc();
    pushed = true;
  }
  if (pushed && !signal_used(ctx, c)) {
    ctx.fail(std::string(name) + ": control queue: used ring access failed");
    return false;
  }
  return true;
}

struct TapBackend::Worker {
  VirtioNet* dev = nullptr;
  const ActivateContext* ctx = nullptr;
  const NetMetrics* nm = nullptr;
  PairQueues pq;
  std::optional<ServedQueue> ctrl;
  uint16_t max_pairs = 1;
  uint16_t pair = 0;
  bool mrg = false;
  bool mq = false;         // VIRTIO_NET_F_MQ negotiated
  uint32_t rx_target = 0;  // cache this many writable bytes before reading (MRG_RXBUF)
  EventFd stop_fd;
  Fd ep;
  std::thread thread;

  bool tap_polled = false;
  bool tap_dead = false;
  bool tx_pending = false;
  bool warned_tx = false;

  // TX scratch: the checked header plus one iovec per readable segment, sized once.
  std::vector<iovec> tx_iov;
  VirtioNetHdr tx_hdr{};

  // RX: popped, still unused chains.
  std::optional<RxChainCache> rxc;
  uint64_t pending_len = 0;     // a frame waiting in `bounce` for enough buffers
  std::vector<iovec> rx_iov;    // readv list: cached segments + the bounce tail
  std::vector<uint8_t> bounce;  // catches the part of a frame the guest's buffers cannot hold

  explicit Worker(EventFd s) : stop_fd(std::move(s)) {}

  [[nodiscard]] SetPairs set_pairs() const {
    return [d = dev](uint16_t n) { d->set_active_pairs(n); };
  }

  void fail_queue(ServedQueue& s, const std::string& why) {
    if (s.dead) return;
    s.dead = true;
    ctx->fail(std::string(dev->name()) + ": queue " + std::to_string(s.index) + ": " + why);
    if (s.kick_fd >= 0) (void)::epoll_ctl(ep.get(), EPOLL_CTL_DEL, s.kick_fd, nullptr);
    if (pq.rx && &s == &*pq.rx) set_tap_polled(false);
  }

  // The tap queue failed (the interface was deleted, the queue detached under us): epoll would
  // report EPOLLERR for ever, so the fd leaves the set and the device asks for a reset.
  void tap_gone(const std::string& why) {
    if (tap_dead) return;
    tap_dead = true;
    tap_polled = false;
    (void)::epoll_ctl(ep.get(), EPOLL_CTL_DEL, pq.tap_fd, nullptr);
    ctx->fail(std::string(dev->name()) + ": tap queue " + std::to_string(pair) + ": " + why);
  }

  void set_tap_polled(bool on) {
    if (on == tap_polled || pq.tap_fd < 0 || tap_dead) return;
    epoll_event ev{};
    ev.events = on ? uint32_t{EPOLLIN} : 0u;
    ev.data.u32 = kTagFrames;
    (void)::epoll_ctl(ep.get(), EPOLL_CTL_MOD, pq.tap_fd, &ev);
    tap_polled = on;
  }

  // ---- TX ----
  // Returns true when chains are left for another round.
  bool tx_round() {
    ServedQueue& s = *pq.tx;
    const GuestMemory& mem = *ctx->mem;
    if (auto st = s.q->disable_notification(mem); !st) {
      fail_queue(s, st.error().message());
      return false;
    }
    for (;;) {
      unsigned done = 0;
      while (done < kTxBudget) {
        auto chain = s.q->pop(mem);
        if (!chain) {
          fail_queue(s, chain.error().message());
          return false;
        }
        if (!*chain) break;
        send_one(**chain);
        if (auto st = s.q->push(mem, **chain, 0); !st) {
          fail_queue(s, st.error().message());
          return false;
        }
        s.m->chains->inc();
        s.m->bytes->inc((*chain)->readable_len);
        ++done;
      }
      if (done > 0 && !signal_used(*ctx, s)) {
        fail_queue(s, "used ring access failed");
        return false;
      }
      if (done == kTxBudget) return true;
      auto more = s.q->enable_notification(mem);
      if (!more) {
        fail_queue(s, more.error().message());
        return false;
      }
      if (!*more) return false;
      if (auto st = s.q->disable_notification(mem); !st) {
        fail_queue(s, st.error().message());
        return false;
      }
    }
  }

  void send_one(const DescriptorChain& c) {
    const TxCheck chk = check_tx_chain(*ctx->mem, c.segments, ctx->features);
    if (chk.drop != TxDrop::None) {
      nm->tx_dropped->inc();
      if (!warned_tx) {
        warned_tx = true;
        log_warn(std::string(dev->name()) + ": TX frame dropped: " + to_string(chk.drop) +
                 " (further drops are only counted)");
      }
      return;
    }
    // The header goes out from the copy that was checked, so the guest cannot change it between
    // the check and the write; the frame goes straight from guest memory.
    tx_hdr = chk.hdr;
    tx_iov[0] = iovec{&tx_hdr, sizeof tx_hdr};
    size_t n = 1;
    uint64_t skip = kNetHdrSize;
    for (const Segment& seg : c.segments) {
      if (seg.write || seg.len == 0) continue;
      if (skip >= seg.len) {
        skip -= seg.len;
        continue;
      }
      auto sp = ctx->mem->span(seg.addr + skip, seg.len - skip);
      skip = 0;
      if (!sp) {  // pop() checked it; only a changed memory map gets here
        nm->tx_dropped->inc();
        return;
      }
      tx_iov[n++] = iovec{sp->data(), sp->size()};
    }
    const ssize_t w = ::writev(pq.tap_fd, tx_iov.data(), static_cast<int>(n));
    // The kernel refuses frames it cannot parse (EINVAL) and drops when the link is down (EIO);
    // either way the guest's chain is done.
    if (w < 0) nm->tx_dropped->inc();
  }

  // ---- RX ----
  // Pops chains into the cache. Returns false when the queue broke.
  bool rx_refill(bool& pushed_bad) {
    auto st = rxc->refill(*ctx->mem, *pq.rx->q, *nm, mrg ? kMaxRxChains : 1, rx_target, pushed_bad);
    if (!st) fail_queue(*pq.rx, st.error().message());
    return st.has_value();
  }

  // Out of (enough) buffers: ask for a kick and stop polling the tap until it comes (section
  // 2.7.10). Returns true when buffers arrived meanwhile (poll the ring again).
  bool rx_wait_for_buffers(ServedQueue& s, bool& ok) {
    auto more = s.q->enable_notification(*ctx->mem);
    if (!more) {
      fail_queue(s, more.error().message());
      ok = false;
      return false;
    }
    if (*more) return true;
    set_tap_polled(false);
    return false;
  }

  // The cache can take no more chains (a frame that does not fit now never will).
  [[nodiscard]] bool rx_cache_capped() const { return rxc->capped(mrg ? kMaxRxChains : 1); }

  // Gives the first chains of the cache, which hold the n bytes of a frame, to the driver. The
  // tap skips the num_buffers field; give() fills it (1 without MRG_RXBUF).
  bool rx_deliver(ServedQueue& s, uint64_t n) {
    uint64_t chains = 0;
    if (auto st = rxc->give(*ctx->mem, *s.q, n, chains); !st) {
      fail_queue(s, st.error().message());
      return false;
    }
    s.m->chains->inc(chains);
    s.m->bytes->inc(n);
    return true;
  }

  // Moves frames from the tap into the rx ring. Zero-copy while the cached buffers can hold any
  // frame (rx_target bytes); below that a frame is read into the bounce buffer and copied once it
  // is known to fit, or kept (pending) until the driver adds buffers, so a slow refill costs a
  // wait, never a frame.
  void rx_round() {
    ServedQueue& s = *pq.rx;
    bool pushed = false;
    bool ok = true;
    for (unsigned frames = 0; frames < kRxBudget;) {
      if (!rx_refill(pushed)) return;
      if (pending_len > 0) {
        if (rxc->bytes() < pending_len) {
          if (!rx_cache_capped()) {
            if (rx_wait_for_buffers(s, ok)) continue;
            if (!ok) return;
            break;
          }
          nm->rx_dropped->inc();  // larger than every buffer the device can hold at once
          pending_len = 0;
          continue;
        }
        rxc->write(0, bounce.data(), pending_len);
        const uint64_t n = pending_len;
        pending_len = 0;
        if (!rx_deliver(s, n)) return;
        pushed = true;
        ++frames;
        continue;
      }
      if (rxc->chains() == 0) {
        if (rx_wait_for_buffers(s, ok)) continue;
        if (!ok) return;
        break;
      }
      // Zero-copy into the cached buffers, the bounce buffer catching any excess; or, when the
      // cache is short, into the bounce buffer alone.
      const bool direct = !mrg || rxc->bytes() >= rx_target || rx_cache_capped();
      size_t nseg = 0;
      uint64_t mapped = 0;
      if (direct) {
        nseg = std::min<size_t>(rxc->segs(), IOV_MAX - 1);
        for (size_t i = 0; i < nseg; ++i) {
          rx_iov[i] = rxc->iov()[i];
          mapped += rx_iov[i].iov_len;
        }
      }
      rx_iov[nseg] = iovec{bounce.data(), bounce.size()};
      const ssize_t r = ::readv(pq.tap_fd, rx_iov.data(), static_cast<int>(nseg + 1));
      if (r < 0) {
        if (errno != EAGAIN && errno != EINTR)
          tap_gone(std::string("read: ") + std::strerror(errno));
        break;
      }
      const auto n = static_cast<uint64_t>(r);
      if (n < kNetHdrSize) {
        ++frames;
        nm->rx_dropped->inc();
        continue;
      }
      if (!direct) {
        pending_len = n;  // delivered by the pending branch, now or after a kick
        continue;
      }
      ++frames;
      if (n > mapped) {
        nm->rx_dropped->inc();  // larger than all the buffers the device can hold at once
        continue;
      }
      if (!rx_deliver(s, n)) return;
      pushed = true;
    }
    if (pushed && !signal_used(*ctx, s)) fail_queue(s, "used ring access failed");
  }

  void on_rx_kick() {
    ServedQueue& s = *pq.rx;
    if (s.dead) return;
    if (!tap_polled) {
      if (auto st = s.q->disable_notification(*ctx->mem); !st) {
        fail_queue(s, st.error().message());
        return;
      }
      set_tap_polled(true);
    }
    // A frame waiting in the bounce buffer may fit now; the tap need not be readable for it.
    if (pending_len > 0) rx_round();
  }

  void run() {
    epoll_event evs[8];
    for (;;) {
      const int timeout = tx_pending ? 0 : -1;
      const int n = ::epoll_wait(ep.get(), evs, 8, timeout);
      if (n < 0) {
        if (errno == EINTR) continue;
        // The queues would go dead silently: fail the device so the driver sees it.
        ctx->fail(std::string("epoll_wait: ") + std::strerror(errno));
        return;
      }
      bool tx = tx_pending;
      for (int i = 0; i < n; ++i) {
        switch (evs[i].data.u32) {
          case kTagStop:
            return;
          case kTagTxKick:
            if (drain_eventfd(pq.tx->kick_fd)) pq.tx->m->kicks->inc();
            tx = true;
            break;
          case kTagRxKick:
            if (drain_eventfd(pq.rx->kick_fd)) pq.rx->m->kicks->inc();
            on_rx_kick();
            break;
          case kTagFrames:
            if ((evs[i].events & (EPOLLERR | EPOLLHUP)) != 0) {
              tap_gone("the tap reported an error or hang-up (was the interface deleted?)");
            } else if (pq.rx && !pq.rx->dead) {
              rx_round();
            }
            break;
          case kTagCtrlKick:
            if (drain_eventfd(ctrl->kick_fd)) ctrl->m->kicks->inc();
            if (!ctrl->dead && !serve_ctrl_queue(*ctx, *ctrl, dev->name(), set_pairs(), *nm, max_pairs, mq)) {
              ctrl->dead = true;
              (void)::epoll_ctl(ep.get(), EPOLL_CTL_DEL, ctrl->kick_fd, nullptr);
            }
            break;
          default:
            break;
        }
      }
      tx_pending = false;
      if (tx && pq.tx && !pq.tx->dead) tx_pending = tx_round();
    }
  }
};

Result<std::unique_ptr<TapBackend>> TapBackend::start(VirtioNet& dev, ActivateContext ctx,
                                                      std::vector<PairQueues> pairs,
                                                      std::optional<ServedQueue> ctrl,
                                                      const NetMetrics& nm, uint16_t max_pairs) {
  std::unique_ptr<TapBackend> b(new TapBackend(std::move(ctx)));
  const bool mrg = (b->ctx_.features & feature_bit(net_feature::kMrgRxbuf)) != 0;
  const bool gso = (b->ctx_.features &
                    (feature_bit(net_feature::kGuestTso4) | feature_bit(net_feature::kGuestTso6) |
                     feature_bit(net_feature::kGuestUfo))) != 0;
  for (size_t p = 0; p < pairs.size(); ++p) {
    auto stop = EventFd::create();
    if (!stop) return std::unexpected(std::move(stop.error()).context("virtio-net stop eventfd"));
    auto w = std::make_unique<Worker>(std::move(*stop));
    w->dev = &dev;
    w->ctx = &b->ctx_;
    w->nm = &nm;
    w->pq = pairs[p];
    w->pair = static_cast<uint16_t>(p);
    w->max_pairs = max_pairs;
    w->mrg = mrg;
    w->mq = (b->ctx_.features & feature_bit(net_feature::kMq)) != 0;
    w->rx_target = kNetHdrSize + (gso ? kMaxFrame : 9018);
    if (p == 0) w->ctrl = ctrl;
    uint32_t qmax = 0;
    if (w->pq.tx) qmax = std::max(qmax, w->pq.tx->q->max_size());
    if (w->pq.rx) qmax = std::max(qmax, w->pq.rx->q->max_size());
    const size_t chain_max = qmax + SplitQueue::kMaxIndirectEntries;
    w->tx_iov.resize(chain_max + 1);
    // The tap's readv takes IOV_MAX iovecs, one of them the bounce buffer.
    w->rxc.emplace(kMaxRxChains, IOV_MAX - 1, chain_max);
    w->rx_iov.resize(IOV_MAX);
    w->bounce.resize(kNetHdrSize + kMaxFrame);

    w->ep = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!w->ep) return fail_errno("virtio-net: epoll_create1");
    auto add = [&](int fd, uint32_t tag, uint32_t events) {
      return epoll_add_tagged(w->ep.get(), fd, tag, events);
    };
    if (auto st = add(w->stop_fd.fd(), kTagStop, EPOLLIN); !st) return std::unexpected(st.error());
    if (w->pq.tx) {
      if (auto st = add(w->pq.tx->kick_fd, kTagTxKick, EPOLLIN); !st) {
        return std::unexpected(st.error());
      }
    }
    if (w->pq.rx) {
      if (auto st = add(w->pq.rx->kick_fd, kTagRxKick, EPOLLIN); !st) {
        return std::unexpected(st.error());
      }
      // Polled from the start: the first empty-ring check turns it off until a kick.
      if (auto st = add(w->pq.tap_fd, kTagFrames, EPOLLIN); !st) return std::unexpected(st.error());
      w->tap_polled = true;
    }
    if (w->ctrl) {
      if (auto st = add(w->ctrl->kick_fd, kTagCtrlKick, EPOLLIN); !st) {
        return std::unexpected(st.error());
      }
    }
    // Work the driver queued before DRIVER_OK (or before a kick could be seen) is picked up.
    w->tx_pending = w->pq.tx.has_value();
    b->workers_.push_back(std::move(w));
  }
  for (auto& w : b->workers_) {
    Worker* raw = w.get();
    w->thread = std::thread([raw] {
      if (raw->ctrl) {
        // Requests queued before the thread started.
        if (!serve_ctrl_queue(*raw->ctx, *raw->ctrl, raw->dev->name(), raw->set_pairs(), *raw->nm,
                              raw->max_pairs, raw->mq)) {
          raw->ctrl->dead = true;
          (void)::epoll_ctl(raw->ep.get(), EPOLL_CTL_DEL, raw->ctrl->kick_fd, nullptr);
        }
      }
      raw->run();
    });
  }
  return b;
}

TapBackend::TapBackend(ActivateContext ctx) : ctx_(std::move(ctx)) {}

void TapBackend::stop() {
  for (auto& w : workers_) {
    if (w->thread.joinable()) {
      (void)w->stop_fd.write();
      w->thread.join();
    }
  }
}

TapBackend::~TapBackend() {
  stop();
}

}  // namespace iovirt::virtio
