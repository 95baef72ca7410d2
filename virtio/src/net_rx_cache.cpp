// RxChainCache (net_backend.hpp): the rx buffers a virtio-net backend holds between frames.
#include <algorithm>
#include <cstring>

#include "net_backend.hpp"

namespace iovirt::virtio {

// Twice the room the limits allow, so the arrays are compacted only now and then.
RxChainCache::RxChainCache(size_t max_chains, size_t max_segs, size_t chain_max_segs)
    : chains_(2 * max_chains),
      max_chains_(max_chains),
      segs_(2 * (max_segs + chain_max_segs)),
      max_segs_(max_segs) {}

void RxChainCache::compact() {
  if (chain0_ > 0) {
    std::copy_n(chains_.begin() + static_cast<ptrdiff_t>(chain0_), nchains_, chains_.begin());
    chain0_ = 0;
  }
  if (seg0_ > 0) {
    std::copy_n(segs_.begin() + static_cast<ptrdiff_t>(seg0_), nsegs_, segs_.begin());
    seg0_ = 0;
  }
}

Status RxChainCache::refill(const GuestMemory& mem, Virtqueue& q, const NetMetrics& nm,
                            size_t chains_limit, uint64_t need, bool& returned_unused) {
  chains_limit = std::min(chains_limit, max_chains_);
  bool batch = chains_limit > 1;  // a frame may span chains: cached extras are used next
  while (nchains_ < chains_limit && nsegs_ < max_segs_ && (nchains_ == 0 || bytes_ < need)) {
    if (batch) {
      const size_t room = std::min(chains_limit - nchains_, max_segs_ - nsegs_);
      bool more = false;
      const size_t before = nchains_;
      if (auto st = refill_batch(mem, q, nm, room, returned_unused, more); !st) return st;
      if (!more) break;  // the ring is empty
      if (nchains_ > before) continue;
      batch = false;  // a chain of another shape is next: pop() takes it
    }
    auto chain = q.pop(mem);
    if (!chain) return std::unexpected(std::move(chain.error()));
    if (!*chain) break;
    const DescriptorChain& c = **chain;
    if (auto st = take(mem, q, nm, c.head, c.desc_count, c.writable_len, c.segments, returned_unused);
        !st)
      return st;
    batch = chains_limit > 1;
  }
  return {};
}

// Pops up to `room` one-buffer chains into the cache; `more` unless the ring was found empty.
Status RxChainCache::refill_batch(const GuestMemory& mem, Virtqueue& q, const NetMetrics& nm,
                                  size_t room, bool& returned_unused, bool& more) {
  room = std::min(room, direct_.size());
  if (chain0_ + nchains_ + room > chains_.size() || seg0_ + nsegs_ + room > segs_.size()) compact();
  auto d = prefetch_ > 0
               ? q.pop_direct(mem, std::span(direct_.data(), room), 0, prefetch_)
               : q.pop_direct(mem, std::span(direct_.data(), room));
  if (!d) return std::unexpected(std::move(d.error()));
  for (uint32_t i = 0; i < d->count; ++i) {
    const DirectChain& c = direct_[i];
    if (c.seg.write && c.seg.len >= kNetHdrSize) {  // the common case
      chains_[chain0_ + nchains_++] = Chain{c.head, 1, c.seg.len, 1};
      segs_[seg0_ + nsegs_++] = iovec{c.host, c.seg.len};
      bytes_ += c.seg.len;
      continue;
    }
    const uint32_t wlen = c.seg.write ? c.seg.len : 0;
    if (auto st = take(mem, q, nm, c.head, 1, wlen, std::span(&c.seg, 1), returned_unused); !st)
      return st;
  }
  more = d->count > 0 || d->blocked;
  return {};
}

Status RxChainCache::take(const GuestMemory& mem, Virtqueue& q, const NetMetrics& nm,
                          uint16_t head, uint16_t desc_count, uint32_t writable_len,
                          std::span<const Segment> segments, bool& returned_unused) {
  // Each buffer must hold at least the header (section 5.1.6.3.1); a chain the device cannot
  // use goes straight back, unused.
  bool usable = writable_len >= kNetHdrSize;
  if (usable && (chain0_ + nchains_ >= chains_.size() || seg0_ > 0)) compact();
  uint32_t nseg = 0;
  for (const Segment& seg : segments) {
    if (!usable) break;
    if (!seg.write || seg.len == 0) continue;
    auto sp = mem.span(seg.addr, seg.len);
    if (!sp || nsegs_ + nseg >= segs_.size()) {
      usable = false;
      break;
    }
    segs_[nsegs_ + nseg] = iovec{sp->data(), sp->size()};
    ++nseg;
  }
  if (!usable) {
    nm.rx_bad_chains->inc();
    if (in_order_ && nchains_ > 0) {
      // Returning it now would overtake the cached chains taken before it.
      return fail("rx buffer " + std::to_string(head) +
                      " has no room for the virtio-net header, behind buffers still in use "
                      "(VIRTIO_F_IN_ORDER: it cannot be returned out of order)",
                  EINVAL);
    }
    if (auto st = q.push(mem, head, desc_count, 0); !st) return st;
    returned_unused = true;
    return {};
  }
  chains_[chain0_ + nchains_++] = Chain{head, desc_count, writable_len, nseg};
  nsegs_ += nseg;
  bytes_ += writable_len;
  return {};
}

void RxChainCache::write(size_t off, const void* src, size_t len) const {
  const auto* from = static_cast<const uint8_t*>(src);
  for (size_t i = seg0_; i < seg0_ + nsegs_ && len > 0; ++i) {
    if (off >= segs_[i].iov_len) {
      off -= segs_[i].iov_len;
      continue;
    }
    const size_t c = std::min(len, segs_[i].iov_len - off);
    std::memcpy(static_cast<uint8_t*>(segs_[i].iov_base) + off, from, c);
    from += c;
    len -= c;
    off = 0;
  }
}

Status RxChainCache::give(const GuestMemory& mem, Virtqueue& q, uint64_t n, uint64_t& chains_used) {
  const Chain* chains = chains_.data() + chain0_;
  size_t k = 0;
  for (uint64_t left = n; left > 0 && k < nchains_; ++k)
    left -= std::min<uint64_t>(left, chains[k].wlen);
  const auto num_buffers = static_cast<uint16_t>(k);
  const uint8_t nb[2] = {static_cast<uint8_t>(num_buffers & 0xff),
                         static_cast<uint8_t>(num_buffers >> 8)};
  write(kNumBuffersOffset, nb, sizeof nb);
  uint64_t left = n;
  for (size_t i = 0; i < k; ++i) {
    const auto w = static_cast<uint32_t>(std::min<uint64_t>(left, chains[i].wlen));
    left -= w;
    if (auto st = q.push_deferred(mem, chains[i].head, chains[i].desc_count, w); !st) return st;
  }
  chains_used += k;
  drop_front(k);
  return {};
}

Status RxChainCache::give_firsts(const GuestMemory& mem, Virtqueue& q,
                                 std::span<const uint32_t> written) {
  const Chain* chains = chains_.data() + chain0_;
  for (size_t i = 0; i < written.size(); ++i) {
    if (auto st = q.push_deferred(mem, chains[i].head, chains[i].desc_count, written[i]); !st)
      return st;
  }
  drop_front(written.size());
  return {};
}

void RxChainCache::drop_front(size_t k) {
  size_t segs = 0;
  for (size_t i = chain0_; i < chain0_ + k; ++i) {
    segs += chains_[i].nseg;
    bytes_ -= chains_[i].wlen;
  }
  chain0_ += k;
  nchains_ -= k;
  seg0_ += segs;
  nsegs_ -= segs;
  if (nchains_ == 0) chain0_ = seg0_ = 0;
}

}  // namespace iovirt::virtio
