// The virtio-pci modern transport against a recording device (the device seam) and a recording
// IrqChip (the KVM seam): capabilities as a driver walks them, feature negotiation, queue set-up
// and activation, doorbells as ioeventfds at the notify addresses, MSI-X vector assignment,
// reset, DEVICE_NEEDS_RESET, the PCI-config access window, and hostile register writes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/bus.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/recording_irq_chip.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/pci_transport.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/vmm/pci_root.hpp"

namespace iovirt::virtio {
namespace {

using namespace pci_layout;
namespace cc = common_cfg;

constexpr uint64_t kF_EventIdx = feature_bit(VIRTIO_F_EVENT_IDX);
constexpr uint64_t kF_Indirect = feature_bit(VIRTIO_F_INDIRECT_DESC);
constexpr uint64_t kF_Version1 = feature_bit(VIRTIO_F_VERSION_1);
constexpr uint64_t kF_Packed = feature_bit(VIRTIO_F_RING_PACKED);
constexpr uint64_t kF_Dev0 = 1u << 0;  // a device-specific bit

// Records what the transport asks of it; the contract's other side.
class RecordingDevice final : public VirtioDevice {
 public:
  std::string_view name() const override { return "rec0"; }
  uint16_t device_id() const override { return kDeviceIdBlock; }
  uint64_t features() const override { return features_; }
  uint16_t num_queues() const override { return 2; }
  uint16_t queue_max_size() const override { return 64; }
  uint32_t config_size() const override { return 8; }
  void read_config(uint32_t offset, std::span<uint8_t> data) override {
    std::memcpy(data.data(), cfg_.data() + offset, data.size());
  }
  void write_config(uint32_t offset, std::span<const uint8_t> data) override {
    std::memcpy(cfg_.data() + offset, data.data(), data.size());
  }
  Status negotiate(uint64_t f) override {
    negotiated_ = f;
    if (refuse_) return fail("combination refused", EINVAL);
    return {};
  }
  Status activate(ActivateContext ctx) override {
    ++activations_;
    ctx_ = std::move(ctx);
    if (fail_activate_) return fail("backend unavailable", EIO);
    return {};
  }
  void reset() override { ++resets_; }

  uint64_t features_ = kF_Version1 | kF_EventIdx | kF_Indirect | kF_Dev0;
  std::array<uint8_t, 8> cfg_{1, 2, 3, 4, 5, 6, 7, 8};
  bool refuse_ = false;
  bool fail_activate_ = false;
  uint64_t negotiated_ = 0;
  int activations_ = 0;
  int resets_ = 0;
  std::optional<ActivateContext> ctx_;
};

class VirtioPciTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const RegionSpec r{0, 1 << 20};
    auto m = GuestMemory::create(std::span(&r, 1));
    ASSERT_TRUE(m);
    mem_.emplace(std::move(*m));
    make();
  }
  void make(VirtioPciOptions opt = {}) {
    pci_.reset();
    auto p = VirtioPciDevice::create(dev_, *mem_, router_, chip_, metrics_, opt);
    ASSERT_TRUE(p) << p.error().message();
    pci_ = std::move(*p);
  }

  uint64_t rd(uint64_t off, size_t size) {
    std::array<uint8_t, 8> b{};
    pci_->bar_read(kBar, off, std::span(b).first(size));
    uint64_t v = 0;
    for (size_t i = size; i-- > 0;) v = (v << 8) | b[i];
    return v;
  }
  void wr(uint64_t off, size_t size, uint64_t v) {
    std::array<uint8_t, 8> b{};
    for (size_t i = 0; i < size; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
    pci_->bar_write(kBar, off, std::span<const uint8_t>(b).first(size));
  }
  uint8_t status() { return static_cast<uint8_t>(rd(cc::kDeviceStatus, 1)); }
  void set_status(uint8_t s) { wr(cc::kDeviceStatus, 1, s); }
  void write_features(uint64_t f) {
    wr(cc::kDriverFeatureSelect, 4, 0);
    wr(cc::kDriverFeature, 4, f & 0xffffffffu);
    wr(cc::kDriverFeatureSelect, 4, 1);
    wr(cc::kDriverFeature, 4, f >> 32);
  }
  uint64_t read_device_features() {
    wr(cc::kDeviceFeatureSelect, 4, 0);
    const uint64_t lo = rd(cc::kDeviceFeature, 4);
    wr(cc::kDeviceFeatureSelect, 4, 1);
    return lo | (rd(cc::kDeviceFeature, 4) << 32);
  }
  // The Linux driver's order: 64-bit addresses as two 32-bit halves.
  void setup_queue(uint16_t q, uint16_t size, uint64_t desc, uint64_t driver, uint64_t device) {
    wr(cc::kQueueSelect, 2, q);
    wr(cc::kQueueSize, 2, size);
    for (auto [off, v] : {std::pair{cc::kQueueDesc, desc}, {cc::kQueueDriver, driver},
                          {cc::kQueueDevice, device}}) {
      wr(off, 4, v & 0xffffffffu);
      wr(off + 4, 4, v >> 32);
    }
    wr(cc::kQueueMsixVector, 2, q + 1u);
    wr(cc::kQueueEnable, 2, 1);
  }
  void bring_up(uint64_t features) {
    set_status(status::kAcknowledge);
    set_status(status::kAcknowledge | status::kDriver);
    write_features(features);
    set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
    wr(cc::kConfigMsixVector, 2, 0);
    setup_queue(0, 32, 0x1000, 0x2000, 0x3000);
    setup_queue(1, 64, 0x4000, 0x5000, 0x6000);
    set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk | status::kDriverOk);
  }
  void enable_msix() {
    const uint16_t cap = *pci_->config().find_capability(PciCapId::MsiX);
    const std::array<uint8_t, 2> mc{0, static_cast<uint8_t>(msix::kEnable >> 8)};
    pci_->config_write(static_cast<uint16_t>(cap + 2), mc);
    for (uint16_t v = 0; v < 3; ++v) {
      wr(kMsixTableOffset + v * 16u, 4, 0xfee00000);
      wr(kMsixTableOffset + v * 16u + 8, 4, 0x40 + v);
      wr(kMsixTableOffset + v * 16u + 12, 4, 0);  // unmask
    }
  }
  uint64_t drain(int fd) {
    uint64_t v = 0;
    return ::read(fd, &v, sizeof v) == sizeof v ? v : 0;
  }

  std::optional<GuestMemory> mem_;
  RecordingIrqChip chip_;
  GsiRouter router_{chip_};
  MetricsRegistry metrics_;
  RecordingDevice dev_;
  std::unique_ptr<VirtioPciDevice> pci_;
};

TEST_F(VirtioPciTest, IdentityAndCapabilitiesAsADriverWalksThem) {
  PciConfigSpace& c = pci_->config();
  EXPECT_EQ(c.get(PciReg16::VendorId), 0x1af4);
  EXPECT_EQ(c.get(PciReg16::DeviceId), 0x1040 + kDeviceIdBlock);
  EXPECT_EQ(c.get(PciReg8::RevisionId), 1);
  EXPECT_EQ(c.get(PciReg8::InterruptPin), 0);
  auto caps = walk_pci_capabilities(c.bytes());
  ASSERT_TRUE(caps) << caps.error().message();
  std::vector<uint8_t> types;
  bool msix = false;
  for (const auto& ref : *caps) {
    if (ref.id == static_cast<uint8_t>(PciCapId::MsiX)) msix = true;
    if (ref.id != static_cast<uint8_t>(PciCapId::VendorSpecific)) continue;
    const uint8_t type = c.peek8(static_cast<uint16_t>(ref.offset + 3));
    types.push_back(type);
    EXPECT_EQ(c.peek8(static_cast<uint16_t>(ref.offset + 4)), kBar);
    const uint32_t off = c.peek32(static_cast<uint16_t>(ref.offset + 8));
    const uint32_t len = c.peek32(static_cast<uint16_t>(ref.offset + 12));
    switch (type) {
      case cap_type::kCommon: EXPECT_EQ(off, kCommonOffset); EXPECT_GE(len, 0x38u); break;
      case cap_type::kIsr: EXPECT_EQ(off, kIsrOffset); EXPECT_EQ(len, 1u); break;
      case cap_type::kDevice: EXPECT_EQ(off, kDeviceOffset); EXPECT_EQ(len, 8u); break;
      case cap_type::kNotify:
        EXPECT_EQ(off, kNotifyOffset);
        EXPECT_EQ(len, 2u * kNotifyMultiplier);
        EXPECT_EQ(c.peek32(static_cast<uint16_t>(ref.offset + 16)), kNotifyMultiplier);
        EXPECT_EQ(c.peek8(static_cast<uint16_t>(ref.offset + 2)), 20);  // cap_len
        break;
      case cap_type::kPciCfg: break;
      default: ADD_FAILURE() << "unexpected cfg_type " << int{type};
    }
  }
  EXPECT_TRUE(msix);
  EXPECT_EQ(types, (std::vector<uint8_t>{cap_type::kCommon, cap_type::kIsr, cap_type::kDevice,
                                         cap_type::kNotify, cap_type::kPciCfg}));
  // Queue 0 + 1 + the config vector.
  EXPECT_EQ(pci_->msix().num_vectors(), 3);
  EXPECT_EQ(rd(cc::kNumQueues, 2), 2u);
  ASSERT_TRUE(c.bar(kBar));
  EXPECT_EQ(c.bar(kBar)->size, kBarSize);
}

TEST_F(VirtioPciTest, NegotiationAcceptsAnOfferedSubset) {
  EXPECT_EQ(read_device_features(), dev_.features_);
  wr(cc::kDeviceFeatureSelect, 4, 7);  // no such word: reads 0
  EXPECT_EQ(rd(cc::kDeviceFeature, 4), 0u);
  set_status(status::kAcknowledge | status::kDriver);
  write_features(kF_Version1 | kF_EventIdx);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  EXPECT_TRUE(status() & status::kFeaturesOk);
  EXPECT_EQ(dev_.negotiated_, kF_Version1 | kF_EventIdx);
  // Frozen after FEATURES_OK.
  write_features(kF_Version1);
  EXPECT_EQ(pci_->driver_features(), kF_Version1 | kF_EventIdx);
}

TEST_F(VirtioPciTest, NegotiationRefusesUnofferedBitsLegacyDriversAndDeviceVetoes) {
  set_status(status::kAcknowledge | status::kDriver);
  write_features(kF_Version1 | kF_Packed);  // not offered by this device
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  EXPECT_FALSE(status() & status::kFeaturesOk);

  set_status(0);
  set_status(status::kAcknowledge | status::kDriver);
  write_features(kF_EventIdx);  // no VERSION_1
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  EXPECT_FALSE(status() & status::kFeaturesOk);

  set_status(0);
  dev_.refuse_ = true;
  set_status(status::kAcknowledge | status::kDriver);
  write_features(kF_Version1);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  EXPECT_FALSE(status() & status::kFeaturesOk);
  // DRIVER_OK without FEATURES_OK does not start the device, and counts as a failure.
  set_status(status::kAcknowledge | status::kDriver | status::kDriverOk);
  EXPECT_EQ(dev_.activations_, 0);
  EXPECT_TRUE(status() & status::kDeviceNeedsReset);
  EXPECT_EQ(rd(kIsrOffset, 1), 2u);
  EXPECT_EQ(metrics_.counter("iovirt_virtio_device_failures_total", "", {{"device", "rec0"}})
                .value(),
            1u);
}

TEST_F(VirtioPciTest, FeatureMaskHidesBitsTheDeviceCouldServe) {
  make(VirtioPciOptions{.features_off = kF_EventIdx | kF_Version1});
  // VERSION_1 cannot be masked off: the modern transport needs it.
  EXPECT_EQ(read_device_features(), kF_Version1 | kF_Indirect | kF_Dev0);
}

TEST_F(VirtioPciTest, DriverOkActivatesTheDeviceWithTheProgrammedQueues) {
  bring_up(kF_Version1 | kF_EventIdx);
  ASSERT_EQ(dev_.activations_, 1);
  ASSERT_TRUE(pci_->active());
  const ActivateContext& ctx = *dev_.ctx_;
  EXPECT_EQ(ctx.features, kF_Version1 | kF_EventIdx);
  EXPECT_EQ(ctx.mem, &*mem_);
  ASSERT_EQ(ctx.queues.size(), 2u);
  const Virtqueue& q0 = *ctx.queues[0].queue;
  EXPECT_EQ(q0.size(), 32u);
  EXPECT_EQ(q0.desc_area(), 0x1000u);
  EXPECT_EQ(q0.driver_area(), 0x2000u);
  EXPECT_EQ(q0.device_area(), 0x3000u);
  EXPECT_TRUE(q0.event_idx());
  EXPECT_TRUE(q0.ready());
  EXPECT_EQ(ctx.queues[1].queue->size(), 64u);
  EXPECT_EQ(ctx.queues[0].kick_fd, pci_->kick_fd(0));
  EXPECT_EQ(ctx.queues[1].index, 1);
  // Read back as programmed, including the 64-bit halves.
  wr(cc::kQueueSelect, 2, 1);
  EXPECT_EQ(rd(cc::kQueueDesc, 8), 0x4000u);
  EXPECT_EQ(rd(cc::kQueueNotifyOff, 2), 1u);
  // Queue registers, the vector included, are frozen while the device runs.
  wr(cc::kQueueDesc, 4, 0x9000);
  wr(cc::kQueueSize, 2, 8);
  wr(cc::kQueueMsixVector, 2, 0);
  EXPECT_EQ(rd(cc::kQueueDesc, 8), 0x4000u);
  EXPECT_EQ(rd(cc::kQueueSize, 2), 64u);
  EXPECT_EQ(rd(cc::kQueueMsixVector, 2), 2u);
}

TEST_F(VirtioPciTest, OnlyEnabledQueuesAreBound) {
  set_status(status::kAcknowledge | status::kDriver);
  write_features(kF_Version1);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  setup_queue(1, 16, 0x4000, 0x5000, 0x6000);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk | status::kDriverOk);
  ASSERT_EQ(dev_.activations_, 1);
  ASSERT_EQ(dev_.ctx_->queues.size(), 1u);
  EXPECT_EQ(dev_.ctx_->queues[0].index, 1);
  EXPECT_FALSE(dev_.ctx_->queues[0].queue->event_idx());
}

TEST_F(VirtioPciTest, RingsOutsideGuestMemoryFailTheDeviceNotTheVmm) {
  set_status(status::kAcknowledge | status::kDriver);
  write_features(kF_Version1);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  setup_queue(0, 32, 0x7fff'f000'0000, 0x2000, 0x3000);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk | status::kDriverOk);
  EXPECT_EQ(dev_.activations_, 0);
  EXPECT_TRUE(status() & status::kDeviceNeedsReset);
  EXPECT_FALSE(pci_->active());
  // A reset recovers.
  set_status(0);
  EXPECT_EQ(status(), 0);
  bring_up(kF_Version1);
  EXPECT_EQ(dev_.activations_, 1);
  EXPECT_FALSE(status() & status::kDeviceNeedsReset);
}

TEST_F(VirtioPciTest, QueueSizeNotAPowerOfTwoFailsTheDevice) {
  set_status(status::kAcknowledge | status::kDriver);
  write_features(kF_Version1);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
  setup_queue(0, 24, 0x1000, 0x2000, 0x3000);
  set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk | status::kDriverOk);
  EXPECT_EQ(dev_.activations_, 0);
  EXPECT_TRUE(status() & status::kDeviceNeedsReset);
}

TEST_F(VirtioPciTest, ActivationFailureSetsNeedsReset) {
  dev_.fail_activate_ = true;
  bring_up(kF_Version1);
  EXPECT_EQ(dev_.activations_, 1);
  EXPECT_TRUE(status() & status::kDeviceNeedsReset);
  EXPECT_FALSE(pci_->active());
}

TEST_F(VirtioPciTest, ResetStopsTheDeviceAndClearsEveryRegister) {
  bring_up(kF_Version1 | kF_EventIdx);
  ASSERT_TRUE(pci_->kick_fd(0) >= 0);
  wr(kNotifyOffset, 2, 0);  // a kick left behind
  const int resets_before = dev_.resets_;
  set_status(0);
  EXPECT_EQ(dev_.resets_, resets_before + 1);
  EXPECT_FALSE(pci_->active());
  EXPECT_EQ(status(), 0);
  EXPECT_EQ(pci_->driver_features(), 0u);
  EXPECT_EQ(rd(cc::kConfigMsixVector, 2), kNoVector);
  wr(cc::kQueueSelect, 2, 0);
  EXPECT_EQ(rd(cc::kQueueSize, 2), 64u);  // back to the maximum
  EXPECT_EQ(rd(cc::kQueueEnable, 2), 0u);
  EXPECT_EQ(rd(cc::kQueueDesc, 8), 0u);
  EXPECT_EQ(rd(cc::kQueueMsixVector, 2), kNoVector);
  EXPECT_EQ(drain(pci_->kick_fd(0)), 0u);  // the old incarnation's kick is gone
}

TEST_F(VirtioPciTest, NotifyWritesSignalTheQueueKickFd) {
  bring_up(kF_Version1);
  wr(kNotifyOffset + kNotifyMultiplier * 1, 2, 1);
  wr(kNotifyOffset + kNotifyMultiplier * 1, 2, 1);
  EXPECT_EQ(drain(pci_->kick_fd(1)), 2u);
  EXPECT_EQ(drain(pci_->kick_fd(0)), 0u);
  // Past the last queue: nothing.
  wr(kNotifyOffset + kNotifyMultiplier * 2, 2, 1);
  EXPECT_EQ(drain(pci_->kick_fd(0)), 0u);
  EXPECT_EQ(drain(pci_->kick_fd(1)), 0u);
}

TEST_F(VirtioPciTest, DoorbellsFollowTheBarAsIoeventfds) {
  pci_->bar_decode_changed(kBar, 0x8'0000'0000);
  auto live = chip_.ioeventfds();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].first, pci_->kick_fd(0));
  EXPECT_EQ(live[0].second.addr, 0x8'0000'0000 + kNotifyOffset);
  EXPECT_EQ(live[1].second.addr, 0x8'0000'0000 + kNotifyOffset + kNotifyMultiplier);
  EXPECT_FALSE(live[0].second.pio);
  EXPECT_FALSE(live[0].second.datamatch);
  EXPECT_TRUE(pci_->ioeventfd_live(1));
  // Moved: old addresses deassigned, new ones assigned.
  pci_->bar_decode_changed(kBar, 0x9'0000'0000);
  live = chip_.ioeventfds();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[1].second.addr, 0x9'0000'0000 + kNotifyOffset + kNotifyMultiplier);
  // Decoding off: gone.
  pci_->bar_decode_changed(kBar, std::nullopt);
  EXPECT_TRUE(chip_.ioeventfds().empty());
  EXPECT_FALSE(pci_->ioeventfd_live(0));
  pci_->bar_decode_changed(kBar, 0xa'0000'0000);
  pci_.reset();  // destruction takes them down
  EXPECT_TRUE(chip_.ioeventfds().empty());
}

TEST_F(VirtioPciTest, RootComplexPlacementRegistersDoorbells) {
  Bus pio("pio"), mmio("mmio");
  PciRoot root(pio, mmio, PciWindows{0xc000, 0x4000, 0xc000'0000, 0x1000'0000,
                                     0x8'0000'0000, 0x1'0000'0000});
  ASSERT_TRUE(root.add_device(3, *pci_));
  EXPECT_TRUE(chip_.ioeventfds().empty());  // Memory Space decode still off
  // The guest enables memory decoding through conf1: bus 0, device 3, function 0, reg 4.
  const uint32_t addr = 0x8000'0000u | (3u << 11) | 0x04;
  const std::array<uint8_t, 4> a{static_cast<uint8_t>(addr), static_cast<uint8_t>(addr >> 8),
                                 static_cast<uint8_t>(addr >> 16), static_cast<uint8_t>(addr >> 24)};
  root.config_ports().write(0, a);
  const std::array<uint8_t, 2> cmd{0x06, 0};  // memory space + bus master
  root.config_ports().write(4, cmd);
  const uint64_t bar = pci_->config().bar_address(kBar);
  EXPECT_GE(bar, 0x8'0000'0000u);
  auto live = chip_.ioeventfds();
  ASSERT_EQ(live.size(), 2u);
  EXPECT_EQ(live[0].second.addr, bar + kNotifyOffset);
  // An MMIO read of num_queues through the bus reaches the common config.
  std::array<uint8_t, 2> nq{};
  mmio.read(bar + kCommonOffset + cc::kNumQueues, nq);
  EXPECT_EQ(nq[0], 2);
}

TEST_F(VirtioPciTest, VectorsOutOfRangeReadBackNoVector) {
  wr(cc::kConfigMsixVector, 2, 3);  // vectors are 0..2
  EXPECT_EQ(rd(cc::kConfigMsixVector, 2), kNoVector);
  wr(cc::kConfigMsixVector, 2, 2);
  EXPECT_EQ(rd(cc::kConfigMsixVector, 2), 2u);
  wr(cc::kQueueSelect, 2, 0);
  wr(cc::kQueueMsixVector, 2, 0x7fff);
  EXPECT_EQ(rd(cc::kQueueMsixVector, 2), kNoVector);
}

TEST_F(VirtioPciTest, QueueInterruptsGoToTheQueuesVectorIrqfd) {
  enable_msix();
  bring_up(kF_Version1);
  VirtioInterrupt& irq = *dev_.ctx_->irq;
  // Queue q uses vector q + 1 (setup_queue); the eventfd is the vector's irqfd.
  EXPECT_EQ(irq.queue_irqfd(0), pci_->msix().notifier(1));
  EXPECT_EQ(irq.queue_irqfd(1), pci_->msix().notifier(2));
  EXPECT_EQ(irq.queue_irqfd(9), -1);
  EXPECT_TRUE(chip_.irqfd_gsi(pci_->msix().notifier(2)).has_value());
  irq.notify_queue(1);
  irq.notify_queue(1);
  EXPECT_EQ(drain(pci_->msix().notifier(2)), 2u);
  EXPECT_EQ(drain(pci_->msix().notifier(1)), 0u);
  // Config change: config vector 0, ISR bit 1 (read clears), generation moves.
  const uint64_t gen = rd(cc::kConfigGeneration, 1);
  irq.notify_config();
  EXPECT_EQ(drain(pci_->msix().notifier(0)), 1u);
  EXPECT_NE(rd(cc::kConfigGeneration, 1), gen);
  EXPECT_EQ(rd(kIsrOffset, 1), 2u);
  EXPECT_EQ(rd(kIsrOffset, 1), 0u);
}

TEST_F(VirtioPciTest, MaskedVectorIsHeldInThePbaUntilUnmask) {
  enable_msix();
  bring_up(kF_Version1);
  wr(kMsixTableOffset + 1 * 16 + 12, 4, msix::kVectorControlMaskBit);
  dev_.ctx_->irq->notify_queue(0);
  EXPECT_EQ(drain(pci_->msix().notifier(1)), 0u);
  EXPECT_EQ(rd(kMsixPbaOffset, 8) & 0x2, 0x2u);
  wr(kMsixTableOffset + 1 * 16 + 12, 4, 0);
  EXPECT_EQ(drain(pci_->msix().notifier(1)), 1u);
  EXPECT_EQ(rd(kMsixPbaOffset, 8) & 0x2, 0u);
}

TEST_F(VirtioPciTest, DeviceFailureSetsNeedsResetAndRaisesAConfigInterrupt) {
  enable_msix();
  bring_up(kF_Version1);
  dev_.ctx_->fail("queue 0: descriptor loop");
  dev_.ctx_->fail("again");  // idempotent: one interrupt
  EXPECT_TRUE(status() & status::kDeviceNeedsReset);
  EXPECT_TRUE(status() & status::kDriverOk);
  EXPECT_EQ(drain(pci_->msix().notifier(0)), 1u);
  EXPECT_EQ(rd(kIsrOffset, 1), 2u);
  EXPECT_EQ(metrics_.counter("iovirt_virtio_device_failures_total", "", {{"device", "rec0"}})
                .value(),
            1u);
  set_status(0);
  EXPECT_EQ(status(), 0);
}

TEST_F(VirtioPciTest, DeviceConfigIsBoundsChecked) {
  EXPECT_EQ(rd(kDeviceOffset, 4), 0x04030201u);
  EXPECT_EQ(rd(kDeviceOffset + 4, 4), 0x08070605u);
  EXPECT_EQ(rd(kDeviceOffset + 6, 4), 0u);  // straddles the end: not forwarded
  EXPECT_EQ(rd(kDeviceOffset + 8, 1), 0u);
  wr(kDeviceOffset + 7, 2, 0xffff);  // straddles: dropped
  EXPECT_EQ(dev_.cfg_[7], 8);
  wr(kDeviceOffset + 7, 1, 0xaa);
  EXPECT_EQ(dev_.cfg_[7], 0xaa);
}

TEST_F(VirtioPciTest, PciCfgCapabilityWindowReachesTheBar) {
  std::optional<uint8_t> cap;
  auto caps = walk_pci_capabilities(pci_->config().bytes());
  ASSERT_TRUE(caps);
  for (const auto& ref : *caps)
    if (ref.id == 0x09 && pci_->config().peek8(static_cast<uint16_t>(ref.offset + 3)) ==
                              cap_type::kPciCfg)
      cap = ref.offset;
  ASSERT_TRUE(cap);
  auto cw = [&](uint16_t off, std::vector<uint8_t> b) {
    pci_->config_write(static_cast<uint16_t>(*cap + off), b);
  };
  cw(4, {static_cast<uint8_t>(kBar)});                                        // bar
  cw(8, {cc::kNumQueues, 0, 0, 0});                                           // offset
  cw(12, {2, 0, 0, 0});                                                       // length
  std::array<uint8_t, 4> data{};
  pci_->config_read(static_cast<uint16_t>(*cap + 16), data);
  EXPECT_EQ(data[0], 2);  // num_queues
  // A write through the window: queue_select = 1.
  cw(8, {cc::kQueueSelect, 0, 0, 0});
  cw(16, {1, 0, 0, 0});
  EXPECT_EQ(rd(cc::kQueueSelect, 2), 1u);
  // Misaligned window offset: ignored.
  cw(8, {cc::kQueueSelect + 1, 0, 0, 0});
  cw(16, {0, 0, 0, 0});
  EXPECT_EQ(rd(cc::kQueueSelect, 2), 1u);
}

TEST_F(VirtioPciTest, HostileRegisterAccessesAreHarmless) {
  // A queue that does not exist: size 0, writes dropped.
  wr(cc::kQueueSelect, 2, 500);
  EXPECT_EQ(rd(cc::kQueueSize, 2), 0u);
  wr(cc::kQueueEnable, 2, 1);
  wr(cc::kQueueDesc, 8, 0x1234);
  EXPECT_EQ(rd(cc::kQueueDesc, 8), 0u);
  // Read-only fields.
  wr(cc::kNumQueues, 2, 99);
  EXPECT_EQ(rd(cc::kNumQueues, 2), 2u);
  wr(cc::kDeviceFeatureSelect, 4, 0);
  wr(cc::kDeviceFeature, 4, 0);
  EXPECT_EQ(read_device_features(), dev_.features_);
  // Accesses straddling the end of the common config, the gaps and other BARs.
  wr(kCommonSize - 2, 4, 0xffffffff);
  EXPECT_EQ(rd(kCommonSize - 2, 4), 0u);
  EXPECT_EQ(rd(0x1800, 4), 0u);
  wr(0x1800, 4, 1);
  std::array<uint8_t, 4> b{};
  pci_->bar_read(2, 0, b);
  EXPECT_EQ(b[0], 0u);
  // Writing queue_enable 0 does not disable (only 1 is defined).
  setup_queue(0, 32, 0x1000, 0x2000, 0x3000);
  wr(cc::kQueueSelect, 2, 0);
  wr(cc::kQueueEnable, 2, 0);
  EXPECT_EQ(rd(cc::kQueueEnable, 2), 1u);
  // An 8-byte write across status and queue_select applies both fields.
  wr(cc::kDeviceStatus, 4, (uint64_t{1} << 16) | status::kAcknowledge);
  EXPECT_EQ(status(), status::kAcknowledge);
  EXPECT_EQ(rd(cc::kQueueSelect, 2), 1u);
}

}  // namespace
}  // namespace iovirt::virtio
