// virtio-net header and control-queue parsing (virtio 1.2 sections 5.1.6.2 and 5.1.6.5): pure
// functions over guest memory, used by the backends and fuzzed by tests/fuzz/fuzz_net_header.cpp.
#include <linux/if_tun.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "iovirt/virtio/net.hpp"

namespace iovirt::virtio {

namespace {

// Walks the chosen kind of segments, calling fn(gpa, len) for the bytes [offset, offset + size).
template <class Fn>
bool walk(std::span<const Segment> segs, bool writable, uint64_t offset, uint64_t size, Fn&& fn) {
  uint64_t skip = offset;
  uint64_t left = size;
  for (const Segment& s : segs) {
    if (left == 0) break;
    if (s.write != writable) continue;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(s.len - skip, left);
    if (!fn(s.addr + skip, n, size - left)) return false;
    skip = 0;
    left -= n;
  }
  return left == 0;
}

}  // namespace

const char* to_string(TxDrop d) {
  switch (d) {
    case TxDrop::None:
      return "none";
    case TxDrop::ShortHeader:
      return "header shorter than 12 bytes";
    case TxDrop::TooLong:
      return "frame longer than 65553 bytes";
    case TxDrop::CsumNotNegotiated:
      return "NEEDS_CSUM without VIRTIO_NET_F_CSUM";
    case TxDrop::CsumOutOfFrame:
      return "csum_start + csum_offset beyond the frame";
    case TxDrop::GsoNotNegotiated:
      return "GSO type not negotiated";
    case TxDrop::GsoBadType:
      return "unknown GSO type";
    case TxDrop::GsoBadSize:
      return "GSO with gso_size 0";
    case TxDrop::GsoBadHdrLen:
      return "GSO with hdr_len beyond the frame";
    case TxDrop::TooManySegments:
      return "more than IOV_MAX - 1 readable segments";
  }
  return "?";
}

bool gather_chain(const GuestMemory& mem, std::span<const Segment> segs, bool writable,
                  uint64_t offset, std::span<uint8_t> out) {
  return walk(segs, writable, offset, out.size(), [&](uint64_t gpa, uint64_t n, uint64_t done) {
    return mem.read(gpa, out.subspan(done, n)).has_value();
  });
}

bool scatter_chain(const GuestMemory& mem, std::span<const Segment> segs, uint64_t offset,
                   std::span<const uint8_t> in) {
  return walk(segs, true, offset, in.size(), [&](uint64_t gpa, uint64_t n, uint64_t done) {
    return mem.write(gpa, in.subspan(done, n)).has_value();
  });
}

TxCheck check_tx_chain(const GuestMemory& mem, std::span<const Segment> segs, uint64_t features) {
  TxCheck r;
  uint64_t readable = 0;
  size_t nsegs = 0;
  for (const Segment& s : segs) {
    if (s.write) continue;  // a TX buffer is device-readable only; writable parts are ignored
    readable += s.len;
    ++nsegs;
  }
  if (nsegs > IOV_MAX - 1) {  // writev takes the checked header copy plus these
    r.drop = TxDrop::TooManySegments;
    return r;
  }
  std::array<uint8_t, kNetHdrSize> raw{};
  if (readable < kNetHdrSize || !gather_chain(mem, segs, false, 0, raw)) {
    r.drop = TxDrop::ShortHeader;
    return r;
  }
  std::memcpy(&r.hdr, raw.data(), raw.size());
  if (readable - kNetHdrSize > kMaxFrame) {
    r.drop = TxDrop::TooLong;
    return r;
  }
  r.frame_len = static_cast<uint32_t>(readable - kNetHdrSize);

  if ((r.hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0) {
    if (!has(features, net_feature::kCsum)) {
      r.drop = TxDrop::CsumNotNegotiated;
      return r;
    }
    if (uint32_t{r.hdr.csum_start} + r.hdr.csum_offset + 2 > r.frame_len) {
      r.drop = TxDrop::CsumOutOfFrame;
      return r;
    }
  }
  const uint8_t gso = r.hdr.gso_type & static_cast<uint8_t>(~VIRTIO_NET_HDR_GSO_ECN);
  const bool ecn = (r.hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN) != 0;
  if (gso == VIRTIO_NET_HDR_GSO_NONE) {
    if (ecn) r.drop = TxDrop::GsoBadType;
    return r;
  }
  unsigned need = 0;
  switch (gso) {
    case VIRTIO_NET_HDR_GSO_TCPV4:
      need = net_feature::kHostTso4;
      break;
    case VIRTIO_NET_HDR_GSO_TCPV6:
      need = net_feature::kHostTso6;
      break;
    case VIRTIO_NET_HDR_GSO_UDP:
      need = net_feature::kHostUfo;
      break;
    default:
      r.drop = TxDrop::GsoBadType;
      return r;
  }
  if (!has(features, need) || (ecn && !has(features, net_feature::kHostEcn))) {
    r.drop = TxDrop::GsoNotNegotiated;
    return r;
  }
  if (r.hdr.gso_size == 0) {
    r.drop = TxDrop::GsoBadSize;
  } else if (r.hdr.hdr_len > r.frame_len) {
    // hdr_len: the length of the headers to copy into each segment (section 5.1.6.2).
    r.drop = TxDrop::GsoBadHdrLen;
  }
  return r;
}

CtrlResult handle_ctrl_chain(const GuestMemory& mem, std::span<const Segment> segs,
                             uint16_t max_pairs, bool mq_negotiated) {
  CtrlResult r;
  uint64_t readable = 0;
  uint64_t writable = 0;
  for (const Segment& s : segs) (s.write ? writable : readable) += s.len;

  // struct virtio_net_ctrl { u8 class; u8 command; u8 command-specific-data[]; u8 ack; }
  std::array<uint8_t, 2> head{};
  if (readable >= 2 && gather_chain(mem, segs, false, 0, head)) {
    r.cls = head[0];
    r.cmd = head[1];
    if (r.cls == VIRTIO_NET_CTRL_MQ && r.cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET && mq_negotiated &&
        readable >= 4) {
      // struct virtio_net_ctrl_mq { le16 virtqueue_pairs; } (section 5.1.6.5.5)
      std::array<uint8_t, 2> v{};
      if (gather_chain(mem, segs, false, 2, v)) {
        const auto pairs = static_cast<uint16_t>(v[0] | (v[1] << 8));
        if (pairs >= 1 && pairs <= max_pairs) {
          r.ack = VIRTIO_NET_OK;
          r.set_pairs = pairs;
        }
      }
    }
  }
  if (writable == 0) {
    r.set_pairs.reset();  // a request the driver cannot see answered is not executed
    return r;
  }
  const uint8_t ack = r.ack;
  if (scatter_chain(mem, segs, 0, std::span<const uint8_t>(&ack, 1))) {
    r.written = 1;
  } else {
    r.set_pairs.reset();
  }
  return r;
}

Status check_net_feature_deps(uint64_t f) {
  using namespace net_feature;
  // Section 5.1.3.1: feature dependencies.
  struct Dep {
    unsigned bit;
    uint64_t needs_any;
    const char* what;
  };
  const Dep deps[] = {
      {kGuestTso4, feature_bit(kGuestCsum), "GUEST_TSO4 needs GUEST_CSUM"},
      {kGuestTso6, feature_bit(kGuestCsum), "GUEST_TSO6 needs GUEST_CSUM"},
      {kGuestEcn, feature_bit(kGuestTso4) | feature_bit(kGuestTso6),
       "GUEST_ECN needs GUEST_TSO4 or GUEST_TSO6"},
      {kGuestUfo, feature_bit(kGuestCsum), "GUEST_UFO needs GUEST_CSUM"},
      {kHostTso4, feature_bit(kCsum), "HOST_TSO4 needs CSUM"},
      {kHostTso6, feature_bit(kCsum), "HOST_TSO6 needs CSUM"},
      {kHostEcn, feature_bit(kHostTso4) | feature_bit(kHostTso6),
       "HOST_ECN needs HOST_TSO4 or HOST_TSO6"},
      {kHostUfo, feature_bit(kCsum), "HOST_UFO needs CSUM"},
      {kCtrlRx, feature_bit(kCtrlVq), "CTRL_RX needs CTRL_VQ"},
      {kMq, feature_bit(kCtrlVq), "MQ needs CTRL_VQ"},
  };
  for (const Dep& d : deps) {
    if (has(f, d.bit) && (f & d.needs_any) == 0) {
      return fail(std::string("virtio-net: feature combination refused: ") + d.what, EINVAL);
    }
  }
  if (!has(f, VIRTIO_F_VERSION_1)) {
    return fail(
        "virtio-net: the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are "
        "not supported)",
        EINVAL);
  }
  return {};
}

unsigned tun_offload_flags(uint64_t f) {
  using namespace net_feature;
  unsigned t = 0;
  if (!has(f, kGuestCsum)) return 0;  // every TUN_F_* offload builds on TUN_F_CSUM
  t |= TUN_F_CSUM;
  if (has(f, kGuestTso4)) t |= TUN_F_TSO4;
  if (has(f, kGuestTso6)) t |= TUN_F_TSO6;
  if (has(f, kGuestEcn) && (t & (TUN_F_TSO4 | TUN_F_TSO6)) != 0) t |= TUN_F_TSO_ECN;
  if (has(f, kGuestUfo)) t |= TUN_F_UFO;
  return t;
}

}  // namespace iovirt::virtio
