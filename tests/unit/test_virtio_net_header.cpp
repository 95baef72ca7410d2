// The pure virtio-net parsers: TX header checks (section 5.1.6.2), control requests (5.1.6.5),
// feature dependencies (5.1.3.1) and the tap offloads derived from the negotiated features.
#include <gtest/gtest.h>
#include <linux/if_tun.h>

#include <cstring>
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"

namespace iovirt::virtio {
namespace {

constexpr uint64_t kHdr = 0x1000;
constexpr uint64_t kCmd = 0x2000;
constexpr uint64_t kAck = 0x3000;

uint64_t bits(std::initializer_list<unsigned> b) {
  uint64_t f = feature_bit(VIRTIO_F_VERSION_1);
  for (unsigned x : b) f |= feature_bit(x);
  return f;
}

class NetHeaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const RegionSpec spec[] = {{0, 1ull << 20}};
    auto m = GuestMemory::create(spec);
    ASSERT_TRUE(m.has_value());
    mem.emplace(std::move(*m));
  }
  // One chain: header then a `frame_len` frame, in one buffer.
  TxCheck tx(const VirtioNetHdr& h, uint32_t frame_len, uint64_t features) {
    EXPECT_TRUE(mem->write_obj(kHdr, h).has_value());
    const Segment s[] = {{kHdr, kNetHdrSize + frame_len, false}};
    return check_tx_chain(*mem, s, features);
  }
  CtrlResult ctrl(std::vector<uint8_t> cmd, uint16_t max_pairs = 4, bool mq = true) {
    EXPECT_TRUE(mem->write(kCmd, cmd).has_value());
    const uint8_t poison = 0xee;
    EXPECT_TRUE(mem->write(kAck, std::span<const uint8_t>(&poison, 1)).has_value());
    const Segment s[] = {{kCmd, static_cast<uint32_t>(cmd.size()), false}, {kAck, 1, true}};
    return handle_ctrl_chain(*mem, s, max_pairs, mq);
  }
  uint8_t ack_byte() {
    uint8_t a = 0;
    EXPECT_TRUE(mem->read(kAck, std::span<uint8_t>(&a, 1)).has_value());
    return a;
  }
  std::optional<GuestMemory> mem;
};

TEST_F(NetHeaderTest, PlainHeaderPasses) {
  const TxCheck r = tx(VirtioNetHdr{}, 60, bits({}));
  EXPECT_EQ(r.drop, TxDrop::None);
  EXPECT_EQ(r.frame_len, 60u);
}

TEST_F(NetHeaderTest, HeaderSplitOverSegmentsIsReassembled) {
  VirtioNetHdr h{};
  h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  h.csum_start = 34;
  h.csum_offset = 16;
  ASSERT_TRUE(mem->write_obj(kHdr, h).has_value());
  const Segment s[] = {{kHdr, 3, false}, {kHdr + 3, 4, false}, {kHdr + 7, 5 + 100, false}};
  const TxCheck r = check_tx_chain(*mem, s, bits({net_feature::kCsum}));
  EXPECT_EQ(r.drop, TxDrop::None);
  EXPECT_EQ(r.hdr.csum_start, 34);
  EXPECT_EQ(r.frame_len, 100u);
}

TEST_F(NetHeaderTest, WritableSegmentsOfATxChainAreIgnored) {
  const Segment s[] = {{kHdr, 8, false}, {kHdr + 8, 100, true}};
  EXPECT_EQ(check_tx_chain(*mem, s, bits({})).drop, TxDrop::ShortHeader);
}

TEST_F(NetHeaderTest, ChecksumRules) {
  VirtioNetHdr h{};
  h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  h.csum_start = 34;
  h.csum_offset = 16;
  EXPECT_EQ(tx(h, 100, bits({})).drop, TxDrop::CsumNotNegotiated);
  EXPECT_EQ(tx(h, 100, bits({net_feature::kCsum})).drop, TxDrop::None);
  EXPECT_EQ(tx(h, 51, bits({net_feature::kCsum})).drop, TxDrop::CsumOutOfFrame);
  EXPECT_EQ(tx(h, 52, bits({net_feature::kCsum})).drop, TxDrop::None);
  h.csum_start = 0xffff;
  h.csum_offset = 0xffff;  // no 16-bit wrap-around
  EXPECT_EQ(tx(h, 100, bits({net_feature::kCsum})).drop, TxDrop::CsumOutOfFrame);
}

TEST_F(NetHeaderTest, GsoRules) {
  VirtioNetHdr h{};
  h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  h.csum_start = 34;
  h.csum_offset = 16;
  h.hdr_len = 54;
  h.gso_size = 1448;
  h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
  const uint64_t tso4 = bits({net_feature::kCsum, net_feature::kHostTso4});
  EXPECT_EQ(tx(h, 3000, bits({net_feature::kCsum})).drop, TxDrop::GsoNotNegotiated);
  EXPECT_EQ(tx(h, 3000, tso4).drop, TxDrop::None);
  h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN;
  EXPECT_EQ(tx(h, 3000, tso4).drop, TxDrop::GsoNotNegotiated);
  EXPECT_EQ(tx(h, 3000, tso4 | feature_bit(net_feature::kHostEcn)).drop, TxDrop::None);
  h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
  EXPECT_EQ(tx(h, 3000, tso4).drop, TxDrop::GsoNotNegotiated);
  h.gso_type = 2;
  EXPECT_EQ(tx(h, 3000, tso4).drop, TxDrop::GsoBadType);
  h.gso_type = VIRTIO_NET_HDR_GSO_ECN;  // ECN without a GSO type
  EXPECT_EQ(tx(h, 3000, tso4).drop, TxDrop::GsoBadType);
  h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
  h.gso_size = 0;
  EXPECT_EQ(tx(h, 3000, tso4).drop, TxDrop::GsoBadSize);
  h.gso_size = 1448;
  h.hdr_len = 3001;
  EXPECT_EQ(tx(h, 3000, tso4).drop, TxDrop::GsoBadHdrLen);
}

TEST_F(NetHeaderTest, OversizedFrameIsDropped) {
  EXPECT_EQ(tx(VirtioNetHdr{}, kMaxFrame, bits({})).drop, TxDrop::None);
  EXPECT_EQ(tx(VirtioNetHdr{}, kMaxFrame + 1, bits({})).drop, TxDrop::TooLong);
}

TEST_F(NetHeaderTest, CtrlPairsSet) {
  CtrlResult r = ctrl({VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 3, 0});
  EXPECT_EQ(r.ack, VIRTIO_NET_OK);
  EXPECT_EQ(r.written, 1u);
  EXPECT_EQ(r.set_pairs, std::optional<uint16_t>(3));
  EXPECT_EQ(ack_byte(), VIRTIO_NET_OK);
  for (auto bad : std::vector<std::vector<uint8_t>>{
           {VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 5, 0},  // above max
           {VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 0, 0},  // zero
           {VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 1, 1},  // 257
           {VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 1},     // truncated
           {VIRTIO_NET_CTRL_MQ, 1, 1, 0},                                // RSS_CONFIG
           {0, 0, 1},                                                    // RX PROMISC
           {VIRTIO_NET_CTRL_MQ}}) {                                      // no command
    r = ctrl(bad);
    EXPECT_EQ(r.ack, VIRTIO_NET_ERR);
    EXPECT_FALSE(r.set_pairs.has_value());
    EXPECT_EQ(ack_byte(), VIRTIO_NET_ERR);
  }
  r = ctrl({VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0}, 4, /*mq=*/false);
  EXPECT_EQ(r.ack, VIRTIO_NET_ERR);
}

TEST_F(NetHeaderTest, CtrlWithoutAckByteIsNotExecuted) {
  const std::vector<uint8_t> cmd = {VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0};
  ASSERT_TRUE(mem->write(kCmd, cmd).has_value());
  const Segment s[] = {{kCmd, 4, false}};
  const CtrlResult r = handle_ctrl_chain(*mem, s, 4, true);
  EXPECT_EQ(r.written, 0u);
  EXPECT_FALSE(r.set_pairs.has_value());
}

TEST_F(NetHeaderTest, CtrlCommandSplitAcrossSegments) {
  const std::vector<uint8_t> cmd = {VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0};
  ASSERT_TRUE(mem->write(kCmd, cmd).has_value());
  const Segment s[] = {
      {kCmd, 2, false}, {kCmd + 2, 1, false}, {kCmd + 3, 1, false}, {kAck, 1, true}};
  const CtrlResult r = handle_ctrl_chain(*mem, s, 4, true);
  EXPECT_EQ(r.ack, VIRTIO_NET_OK);
  EXPECT_EQ(r.set_pairs, std::optional<uint16_t>(2));
}

TEST(NetFeatures, Dependencies) {
  using namespace net_feature;
  EXPECT_TRUE(check_net_feature_deps(bits({kCsum, kHostTso4, kHostEcn})).has_value());
  EXPECT_FALSE(check_net_feature_deps(bits({kHostTso4})).has_value());
  EXPECT_FALSE(check_net_feature_deps(bits({kCsum, kHostEcn})).has_value());
  EXPECT_FALSE(check_net_feature_deps(bits({kGuestTso6})).has_value());
  EXPECT_FALSE(check_net_feature_deps(bits({kMq})).has_value());
  EXPECT_TRUE(check_net_feature_deps(bits({kMq, kCtrlVq})).has_value());
  EXPECT_FALSE(check_net_feature_deps(feature_bit(kMac)).has_value());  // no VERSION_1
}

TEST(NetFeatures, TapOffloadsFollowTheGuestFeatures) {
  using namespace net_feature;
  EXPECT_EQ(tun_offload_flags(bits({})), 0u);
  EXPECT_EQ(tun_offload_flags(bits({kGuestTso4})), 0u);  // nothing without GUEST_CSUM
  EXPECT_EQ(tun_offload_flags(bits({kGuestCsum})), unsigned{TUN_F_CSUM});
  EXPECT_EQ(tun_offload_flags(bits({kGuestCsum, kGuestTso4, kGuestTso6, kGuestEcn})),
            unsigned{TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN});
  EXPECT_EQ(tun_offload_flags(bits({kGuestCsum, kGuestEcn})), unsigned{TUN_F_CSUM});
}

}  // namespace
}  // namespace iovirt::virtio
