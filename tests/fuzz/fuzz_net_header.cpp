// libFuzzer target for the guest-controlled parsing of virtio-net: the TX chain header check
// (check_tx_chain, section 5.1.6.2) and the control-queue request parser (handle_ctrl_chain,
// section 5.1.6.5), over chains that are either given as raw segments or popped from a hostile
// split ring (so the segments are exactly what the device would see).
//
// Input layout (missing bytes read as zero):
//   [0..7]  negotiated features (u64, little-endian)
//   [8]     bit0: chain source (0 raw segments, 1 popped from a split ring); bits 1..3: max_pairs-1
//           bit4: MQ negotiated
//   [9]     number of segments / descriptors (% 17)
//   then per entry: raw: addr u32 (% memory size + 512, so some run off the end), len u16,
//                        flags u8 (bit0 writable)
//                   ring: a 16-byte virtq_desc (addr is taken % 2 * memory size)
//   rest:   guest memory contents from gpa kDataGpa (headers, commands)
// Invariants (violation -> __builtin_trap): an accepted TX header describes a frame inside the
// chain (csum_start + csum_offset + 2 <= frame_len, frame <= kMaxFrame), only negotiated GSO
// types pass; a ctrl answer is OK/ERR, written <= 1, the ack byte in memory is the answer, and
// VQ_PAIRS_SET is accepted only for 1..max_pairs with MQ negotiated.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/split_queue.hpp"
#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using iovirt::GuestMemory;
using iovirt::RegionSpec;
using namespace iovirt::virtio;

constexpr uint64_t kMemSize = 64 * 1024;
constexpr uint64_t kDataGpa = 0x1000;
constexpr uint64_t kDescGpa = 0x8000;
constexpr uint64_t kAvailGpa = 0x9000;
constexpr uint64_t kUsedGpa = 0xa000;
constexpr uint16_t kQueueSize = 16;

using iovirt::fuzz::check;
using iovirt::fuzz::Reader;

GuestMemory& memory() {
  static GuestMemory* mem = [] {
    const RegionSpec spec[] = {{0, kMemSize}};
    auto m = GuestMemory::create(spec);
    if (!m) __builtin_trap();
    return new GuestMemory(std::move(*m));
  }();
  return *mem;
}

bool has(uint64_t f, unsigned bit) {
  return (f & feature_bit(bit)) != 0;
}

void check_tx(const GuestMemory& mem, std::span<const Segment> segs, uint64_t features) {
  const TxCheck r = check_tx_chain(mem, segs, features);
  uint64_t readable = 0;
  for (const Segment& s : segs) {
    if (!s.write) readable += s.len;
  }
  if (r.drop != TxDrop::None) return;
  check(readable >= kNetHdrSize);
  check(r.frame_len == readable - kNetHdrSize);
  check(r.frame_len <= kMaxFrame);
  if ((r.hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0) {
    check(has(features, net_feature::kCsum));
    check(uint32_t{r.hdr.csum_start} + r.hdr.csum_offset + 2 <= r.frame_len);
  }
  const uint8_t gso = r.hdr.gso_type & 0x7f;
  if (gso == VIRTIO_NET_HDR_GSO_TCPV4) check(has(features, net_feature::kHostTso4));
  if (gso == VIRTIO_NET_HDR_GSO_TCPV6) check(has(features, net_feature::kHostTso6));
  if (gso == VIRTIO_NET_HDR_GSO_UDP) check(has(features, net_feature::kHostUfo));
  check(gso == 0 || gso == 1 || gso == 3 || gso == 4);
  if (gso != 0) check(r.hdr.gso_size != 0 && r.hdr.hdr_len <= r.frame_len);
  if ((r.hdr.gso_type & VIRTIO_NET_HDR_GSO_ECN) != 0) {
    check(gso != 0 && has(features, net_feature::kHostEcn));
  }
}

void check_ctrl(const GuestMemory& mem, std::span<const Segment> segs, uint16_t max_pairs,
                bool mq) {
  const CtrlResult r = handle_ctrl_chain(mem, segs, max_pairs, mq);
  check(r.ack == VIRTIO_NET_OK || r.ack == VIRTIO_NET_ERR);
  check(r.written <= 1);
  if (r.set_pairs) {
    check(mq && r.ack == VIRTIO_NET_OK && r.written == 1);
    check(*r.set_pairs >= 1 && *r.set_pairs <= max_pairs);
    check(r.cls == VIRTIO_NET_CTRL_MQ && r.cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET);
  }
  if (r.ack == VIRTIO_NET_OK && r.written == 1) check(r.set_pairs.has_value());
  if (r.written == 1) {
    uint8_t ack = 0xff;
    check(gather_chain(mem, segs, true, 0, std::span<uint8_t>(&ack, 1)));
    check(ack == r.ack);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const GuestMemory& mem = memory();
  std::memset(mem.regions()[0].host, 0, kMemSize);
  Reader in(data, size);
  const uint64_t features = in.u64();
  const uint8_t mode = in.u8();
  const auto max_pairs = static_cast<uint16_t>(((mode >> 1) & 7) + 1);
  const bool mq = (mode & 0x10) != 0;
  const unsigned n = in.u8() % 17;

  std::vector<Segment> raw;
  std::vector<VirtqDesc> descs;
  for (unsigned i = 0; i < n; ++i) {
    if ((mode & 1) == 0) {
      const uint64_t addr = in.u32() % (kMemSize + 512);
      const uint32_t len = in.u16();
      const bool write = (in.u8() & 1) != 0;
      raw.push_back(Segment{addr, len, write});
    } else {
      VirtqDesc d{};
      d.addr = in.u64() % (2 * kMemSize);
      d.len = in.u32();
      d.flags = in.u16();
      d.next = in.u16();
      descs.push_back(d);
    }
  }
  auto rest = in.rest();
  if (rest.size() > kMemSize - kDataGpa - 0x8000) rest = rest.first(kMemSize - kDataGpa - 0x8000);
  if (!rest.empty()) check(mem.write(kDataGpa, rest).has_value());

  if ((mode & 1) == 0) {
    check_tx(mem, raw, features);
    check_ctrl(mem, raw, max_pairs, mq);
    return 0;
  }

  // Through the device's own ring walk: every popped chain is parsed both ways.
  for (size_t i = 0; i < descs.size(); ++i) {
    check(mem.write_obj(kDescGpa + 16 * i, descs[i]).has_value());
  }
  auto q = SplitQueue::create(kQueueSize);
  check(q.has_value());
  q->set_desc_table(kDescGpa);
  q->set_avail_ring(kAvailGpa);
  q->set_used_ring(kUsedGpa);
  q->set_indirect(true);
  q->set_ready(true);
  const auto heads = static_cast<uint16_t>(descs.size() > 4 ? 4 : descs.size());
  for (uint16_t h = 0; h < heads; ++h) {
    check(mem.write_obj<uint16_t>(kAvailGpa + avail_ring_offset(h), h).has_value());
  }
  check(mem.write_obj<uint16_t>(kAvailGpa + avail_idx_offset(), heads).has_value());
  for (uint16_t h = 0; h < heads; ++h) {
    auto chain = q->pop(mem);
    if (!chain || !*chain) break;
    const std::vector<Segment> segs((*chain)->segments.begin(), (*chain)->segments.end());
    for (const Segment& s : segs) check(mem.span(s.addr, s.len).has_value());
    check_tx(mem, segs, features);
    check_ctrl(mem, segs, max_pairs, mq);
    if (!q->push(mem, (*chain)->head, 0)) break;
  }
  return 0;
}
