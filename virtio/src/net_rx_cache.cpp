// RxChainCache (net_backend.hpp): the rx buffers a virtio-net backend holds between frames.
#include <algorithm>
#include <cstring>

#include "net_backend.hpp"

namespace iovirt::virtio {

RxChainCache::RxChainCache(size_t max_chains, size_t max_segs, size_t chain_max_segs)
    : chains_(max_chains), segs_(max_segs + chain_max_segs), max_segs_(max_segs) {}

Status RxChainCache::refill(const GuestMemory& mem, Virtqueue& q, const NetMetrics& nm,
                            size_t chains_limit, uint64_t need, bool& returned_unused) {
  chains_limit = std::min(chains_limit, chains_.size());
  while (nchains_ < chains_limit && nsegs_ < max_segs_ && (nchains_ == 0 || bytes_ < need)) {
    auto chain = q.pop(mem);
    if (!chain) return std::unexpected(std::move(chain.error()));
    if (!*chain) break;
    const DescriptorChain& c = **chain;
    // Each buffer must hold at least the header (section 5.1.6.3.1); a chain the device cannot
    // use goes straight back, unused.
    bool usable = c.writable_len >= kNetHdrSize;
    uint32_t nseg = 0;
    for (const Segment& seg : c.segments) {
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
      if (auto st = q.push(mem, c, 0); !st) return st;
      returned_unused = true;
      continue;
    }
    chains_[nchains_++] = Chain{c.head, c.desc_count, c.writable_len, nseg};
    nsegs_ += nseg;
    bytes_ += c.writable_len;
  }
  return {};
}

void RxChainCache::write(size_t off, const void* src, size_t len) const {
  const auto* from = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < nsegs_ && len > 0; ++i) {
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
  size_t k = 0;
  for (uint64_t left = n; left > 0 && k < nchains_; ++k)
    left -= std::min<uint64_t>(left, chains_[k].wlen);
  const auto num_buffers = static_cast<uint16_t>(k);
  const uint8_t nb[2] = {static_cast<uint8_t>(num_buffers & 0xff),
                         static_cast<uint8_t>(num_buffers >> 8)};
  write(kNumBuffersOffset, nb, sizeof nb);
  uint64_t left = n;
  for (size_t i = 0; i < k; ++i) {
    const auto w = static_cast<uint32_t>(std::min<uint64_t>(left, chains_[i].wlen));
    left -= w;
    if (auto st = q.push_deferred(mem, chains_[i].head, chains_[i].desc_count, w); !st) return st;
  }
  chains_used += k;
  drop_front(k);
  return {};
}

void RxChainCache::drop_front(size_t k) {
  size_t segs = 0;
  for (size_t i = 0; i < k; ++i) {
    segs += chains_[i].nseg;
    bytes_ -= chains_[i].wlen;
  }
  std::copy(chains_.begin() + static_cast<ptrdiff_t>(k),
            chains_.begin() + static_cast<ptrdiff_t>(nchains_), chains_.begin());
  nchains_ -= k;
  std::copy(segs_.begin() + static_cast<ptrdiff_t>(segs),
            segs_.begin() + static_cast<ptrdiff_t>(nsegs_), segs_.begin());
  nsegs_ -= segs;
}

}  // namespace iovirt::virtio
