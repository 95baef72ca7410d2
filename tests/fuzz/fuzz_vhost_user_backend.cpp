// libFuzzer target for the vhost-user back-end's state machine (VhostUserBackend::serve): a
// hostile front-end sends a sequence of well-formed messages in any order with values drawn from
// the input (memory tables over real memfds, ring sizes and addresses inside or outside them,
// kick/call fds, features, enables, inflight areas, resets), then kicks every ring and hangs up.
// The device behind it is a VirtioNet on ring-loopback ports, so activated rings are really served
// by worker threads over whatever the rings hold (zeros or input bytes).
//
// Input: a list of operations, each [op byte][operand bytes...] (missing bytes read as zero).
// Invariants (violation -> trap): serve() returns (the connection ends however the peer
// behaved), and no fd leaks: every fd the back-end received is closed once serve() returned.
// Memory errors are ASan's.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "fuzz_input.hpp"
#include "iovirt/core/log.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/packet_port.hpp"
#include "iovirt/virtio/vhost_user/backend.hpp"
#include "iovirt/virtio/vhost_user/protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace vu = iovirt::virtio::vhost_user;
using iovirt::Fd;
using iovirt::fuzz::open_fds;
using iovirt::fuzz::check;
using iovirt::fuzz::Reader;

constexpr uint64_t kRegion = 256 * 1024;   // each memfd region
constexpr uint64_t kUaddrBase = 0x7f0000000000ull;  // the front-end's "virtual" addresses
constexpr uint16_t kPairs = 2;

Fd memfd(uint64_t size) {
  Fd f(::memfd_create("fuzz-guest", MFD_CLOEXEC));
  check(f.valid() && ::ftruncate(f.get(), static_cast<off_t>(size)) == 0);
  return f;
}

struct Harness {
  iovirt::MetricsRegistry metrics;
  std::unique_ptr<iovirt::virtio::VirtioNet> dev;
  std::unique_ptr<vu::VhostUserBackend> backend;
  Harness() {
    iovirt::set_log_level(iovirt::LogLevel::Error);  // the back-end logs every refusal
    iovirt::virtio::NetConfig cfg;
    cfg.port = [](uint16_t, uint16_t) -> iovirt::Result<std::unique_ptr<iovirt::virtio::PacketPort>> {
      return iovirt::virtio::make_loopback_port(16);
    };
    cfg.port_name = "ring-loopback";
    cfg.queue_pairs = kPairs;
    cfg.queue_size = 64;
    auto d = iovirt::virtio::VirtioNet::create(cfg, metrics, "fuzz0");
    check(d.has_value());
    dev = std::move(*d);
    auto b = vu::VhostUserBackend::create(*dev, metrics);
    check(b.has_value());
    backend = std::move(*b);
  }
};

// A ring address: inside one of the two regions (most of the time) or anywhere.
uint64_t ring_uaddr(Reader& in) {
  const uint8_t sel = in.u8();
  if (sel < 200) return kUaddrBase + (sel % 2) * kRegion + (uint64_t{in.u16()} % kRegion & ~uint64_t{15});
  return in.u64();
}

vu::Message next_message(Reader& in, uint64_t offered, std::vector<Fd>& kicks) {
  using vu::Request;
  const uint8_t op = in.u8() % 18;
  const auto q = static_cast<uint32_t>(in.u8() % (2 * kPairs + 2));  // one index past the device
  switch (op) {
    case 0:
      return vu::make_request(Request::GetFeatures);
    case 1:
      return vu::make_request(Request::SetFeatures, vu::U64{offered & (in.u64() | 1ull << 32)},
                              in.u8() & 1);
    case 2:
      return vu::make_request(Request::SetProtocolFeatures,
                              vu::U64{vu::backend_protocol_features() & in.u64()});
    case 3: {
      vu::MemTable t;
      const unsigned n = 1 + in.u8() % 2;
      for (unsigned i = 0; i < n; ++i) {
        const uint64_t size = in.u8() < 220 ? kRegion : kRegion * 2;  // sometimes beyond the file
        t.regions.push_back(vu::MemRegion{i * 0x100000ull, size, kUaddrBase + i * kRegion, 0});
        t.fds.push_back(memfd(kRegion));
      }
      return vu::make_request(Request::SetMemTable, std::move(t), in.u8() & 1);
    }
    case 4:
      return vu::make_request(Request::SetVringNum, vu::VringState{q, 1u << (in.u8() % 8)});
    case 5:
      return vu::make_request(Request::SetVringBase, vu::VringState{q, in.u16()});
    case 6:
      return vu::make_request(Request::SetVringAddr,
                              vu::VringAddr{q, 0, ring_uaddr(in), ring_uaddr(in), ring_uaddr(in), 0});
    case 7: {
      Fd k(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      Fd dup(::dup(k.get()));
      kicks.push_back(std::move(k));
      return vu::make_request(Request::SetVringKick, vu::VringFd{q, std::move(dup)});
    }
    case 8:
      return vu::make_request(Request::SetVringCall,
                              vu::VringFd{q, Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK))});
    case 9:
      return vu::make_request(Request::SetVringEnable, vu::VringState{q, in.u8() & 1u}, in.u8() & 1);
    case 10:
      return vu::make_request(Request::GetVringBase, vu::VringState{q, 0});
    case 11:
      return vu::make_request(Request::GetQueueNum);
    case 12:
      return vu::make_request(Request::ResetDevice);
    case 13: {
      const uint16_t qs = static_cast<uint16_t>(1u << (in.u8() % 8));
      return vu::make_request(Request::GetInflightFd,
                              vu::Inflight{vu::InflightWire{0, 0, static_cast<uint16_t>(1 + q % 4), qs, 0}, Fd()});
    }
    case 14: {
      const uint16_t nq = static_cast<uint16_t>(1 + in.u8() % 4);
      const uint16_t qs = static_cast<uint16_t>(1u << (in.u8() % 8));
      // Big enough for either layout, so a packed ring's area is accepted too.
      const uint64_t size = iovirt::virtio::inflight_packed_queue_bytes(qs) * nq;
      Fd f = memfd(size);
      // Sometimes a predecessor's marks: bytes from the input over the area.
      const auto rest = in.rest();
      const size_t n = std::min<size_t>({rest.size(), size, in.u8()});
      if (n > 0) check(::pwrite(f.get(), rest.data(), n, 0) == static_cast<ssize_t>(n));
      return vu::make_request(Request::SetInflightFd,
                              vu::Inflight{vu::InflightWire{size, 0, nq, qs, 0}, std::move(f)});
    }
    case 15:
      return vu::make_request(Request::GetConfig, vu::Config{0, 0, std::vector<uint8_t>(in.u8() % 16)});
    case 16:
      return vu::make_request(Request::SetStatus, vu::U64{in.u8()});
    default:
      return vu::make_request(Request::SetOwner);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Harness h;  // the device and back-end are reused, as a daemon reuses them
  const size_t before = open_fds();
  {
    Reader in(data, size);
    auto p = vu::Connection::pair();
    check(p.has_value());
    vu::Connection ours = std::move(p->first);
    iovirt::Status served;
    bool done = false;
    std::thread server([&, c = std::move(p->second)]() mutable {
      served = h.backend->serve(std::move(c));
      done = true;
    });
    // Replies are read (and dropped) on another thread so the back-end never blocks on a full
    // socket while this one is sending.
    std::thread drain([&ours] {
      for (;;) {
        auto r = ours.receive(vu::Role::Frontend, vu::Limits{});
        if (!r || !r->has_value()) return;
      }
    });
    const uint64_t offered = h.backend->offered_features();
    std::vector<Fd> kicks;
    for (int i = 0; i < 64 && !in.empty(); ++i) {
      vu::Message m = next_message(in, offered, kicks);
      if (!ours.send(m)) break;  // the back-end closed the connection
    }
    const uint64_t one = 1;
    for (const Fd& k : kicks) (void)!::write(k.get(), &one, sizeof one);
    ::shutdown(ours.fd(), SHUT_WR);
    server.join();
    ::shutdown(ours.fd(), SHUT_RDWR);
    drain.join();
    check(done);
  }
  check(open_fds() == before);
  return 0;
}
