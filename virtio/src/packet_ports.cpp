// The built-in PacketPorts (packet_port.hpp): ring-loopback, sink and source. Each owns a fixed
// pool of 2 KiB buffers allocated once; nothing is allocated per frame.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <vector>

#include "iovirt/virtio/packet_port.hpp"

namespace iovirt::virtio {

namespace {

constexpr uint32_t kBufSize = 2048;

// A fixed set of buffers handed out by index (the cookie).
class BufferPool {
 public:
  explicit BufferPool(uint32_t count) : mem_(size_t{count} * kBufSize), free_(count) {
    for (uint32_t i = 0; i < count; ++i) free_[i] = count - 1 - i;
  }
  uint32_t alloc(std::span<PacketBuf> bufs) {
    const auto n = static_cast<uint32_t>(std::min<size_t>(bufs.size(), free_.size()));
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t idx = free_.back();
      free_.pop_back();
      bufs[i] = PacketBuf{mem_.data() + size_t{idx} * kBufSize, 0, kBufSize,
                          reinterpret_cast<void*>(uintptr_t{idx})};
    }
    return n;
  }
  void release(std::span<const PacketBuf> bufs) {
    for (const PacketBuf& b : bufs)
      free_.push_back(static_cast<uint32_t>(reinterpret_cast<uintptr_t>(b.cookie)));
  }

 private:
  std::vector<uint8_t> mem_;
  std::vector<uint32_t> free_;  // capacity fixed at construction: push_back never allocates
};

// A port whose buffers come from its own pool and whose frames are there when asked for.
class PooledPort : public PacketPort {
 public:
  explicit PooledPort(uint32_t buffers) : pool_(buffers) {}
  uint32_t alloc(std::span<PacketBuf> bufs) override { return pool_.alloc(bufs); }
  void release(std::span<PacketBuf> bufs) override { pool_.release(bufs); }
  int rx_wake() const override { return kRxAfterTransmit; }
  uint32_t max_frame() const override { return kBufSize; }

 protected:
  BufferPool pool_;
};

class LoopbackPort final : public PooledPort {
 public:
  // The ring's size is `depth` rounded up to a power of two, so a slot is an index under a mask:
  // a `%` per frame each way was a 64-bit division each (io-forward through it, packed rings, on
  // an EPYC: 11.1 -> 11.6 Mpps).
  explicit LoopbackPort(uint32_t depth)
      : PooledPort(depth + 2 * 64),
        ring_(std::bit_ceil(depth)),
        mask_(ring_.size() - 1),
        depth_(depth) {}
  std::string describe() const override { return "ring-loopback"; }
  void transmit(std::span<PacketBuf> bufs) override {
    for (const PacketBuf& b : bufs) {
      if (count_ == depth_) {
        pool_.release(std::span(&b, 1));  // full: dropped, as a NIC queue would
        continue;
      }
      ring_[(head_ + count_) & mask_] = b;
      ++count_;
    }
  }
  uint32_t receive(std::span<PacketBuf> bufs) override {
    const auto n = static_cast<uint32_t>(std::min<size_t>(bufs.size(), count_));
    for (uint32_t i = 0; i < n; ++i) {
      bufs[i] = ring_[head_];
      head_ = (head_ + 1) & mask_;
    }
    count_ -= n;
    return n;
  }

 private:
  std::vector<PacketBuf> ring_;
  size_t mask_;
  size_t depth_;
  size_t head_ = 0;
  size_t count_ = 0;
};

class SinkPort final : public PooledPort {
 public:
  explicit SinkPort(std::shared_ptr<SinkCounters> c) : PooledPort(256), counters_(std::move(c)) {}
  std::string describe() const override { return "sink"; }
  void transmit(std::span<PacketBuf> bufs) override {
    uint64_t bytes = 0;
    for (const PacketBuf& b : bufs) bytes += b.len;
    if (counters_) {
      std::atomic_ref(counters_->frames).fetch_add(bufs.size(), std::memory_order_relaxed);
      std::atomic_ref(counters_->bytes).fetch_add(bytes, std::memory_order_relaxed);
    }
    pool_.release(bufs);
  }
  uint32_t receive(std::span<PacketBuf>) override { return 0; }

 private:
  std::shared_ptr<SinkCounters> counters_;
};

class SourcePort final : public PooledPort {
 public:
  explicit SourcePort(uint32_t len) : PooledPort(256), len_(len) {
    // Broadcast Ethernet, IPv4 (0x0800), UDP 9 -> 9 (discard), TTL 64; a sequence number at the
    // start of the payload. Checksums are left 0 (UDP allows it; the IPv4 one is filled in).
    tmpl_.assign(len_, 0);
    std::memset(tmpl_.data(), 0xff, 6);
    const uint8_t src[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01};
    std::memcpy(tmpl_.data() + 6, src, 6);
    tmpl_[12] = 0x08;
    uint8_t* ip = tmpl_.data() + 14;
    const auto ip_len = static_cast<uint16_t>(len_ - 14);
    ip[0] = 0x45;
    ip[2] = static_cast<uint8_t>(ip_len >> 8);
    ip[3] = static_cast<uint8_t>(ip_len);
    ip[8] = 64;
    ip[9] = 17;
    const uint8_t addrs[8] = {192, 0, 2, 1, 192, 0, 2, 2};  // TEST-NET-1
    std::memcpy(ip + 12, addrs, sizeof addrs);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += uint32_t{ip[i]} << 8 | ip[i + 1];
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
    const auto csum = static_cast<uint16_t>(~sum);
    ip[10] = static_cast<uint8_t>(csum >> 8);
    ip[11] = static_cast<uint8_t>(csum);
    uint8_t* udp = ip + 20;
    udp[1] = 9;
    udp[3] = 9;
    const auto udp_len = static_cast<uint16_t>(ip_len - 20);
    udp[4] = static_cast<uint8_t>(udp_len >> 8);
    udp[5] = static_cast<uint8_t>(udp_len);
  }
  std::string describe() const override { return "source (" + std::to_string(len_) + "-byte frames)"; }
  void transmit(std::span<PacketBuf> bufs) override { pool_.release(bufs); }  // frames sent to it vanish
  uint32_t receive(std::span<PacketBuf> bufs) override {
    const uint32_t n = pool_.alloc(bufs);
    for (uint32_t i = 0; i < n; ++i) {
      std::memcpy(bufs[i].data, tmpl_.data(), len_);
      const uint64_t s = seq_++;
      std::memcpy(bufs[i].data + 42, &s, std::min<uint32_t>(8, len_ - 42));
      bufs[i].len = len_;
    }
    return n;
  }

 private:
  uint32_t len_;
  std::vector<uint8_t> tmpl_;
  uint64_t seq_ = 0;
};

}  // namespace

std::unique_ptr<PacketPort> make_loopback_port(uint32_t depth) {
  return std::make_unique<LoopbackPort>(std::clamp<uint32_t>(depth, 1, uint32_t{1} << 20));
}

std::unique_ptr<PacketPort> make_sink_port(std::shared_ptr<SinkCounters> counters) {
  return std::make_unique<SinkPort>(std::move(counters));
}

std::unique_ptr<PacketPort> make_source_port(uint32_t frame_len) {
  return std::make_unique<SourcePort>(std::clamp<uint32_t>(frame_len, 60, 1514));
}

}  // namespace iovirt::virtio
