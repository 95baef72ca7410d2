// libFuzzer target for the vhost-user protocol parser and framing: the input is a hostile peer's
// bytes plus a number of file descriptors it attaches.
//
// Input layout (missing bytes read as zero):
//   [0] bit0 role (0: back-end parsing requests, 1: front-end parsing replies),
//       bit1 go through a real socketpair (Connection::send_raw + recv loop, possibly several
//       messages and a torn last one) instead of calling parse() on the bytes directly
//   [1] fds to attach: b % 11 (0..10; above 8 must be refused), real eventfds created here
//   [2] Limits::max_queues = b % 9 (0..8), [3] Limits::max_mem_slots = b % 10 (0..9)
//   rest: the message bytes (header + payload)
// Invariants (violation -> __builtin_trap): no fd leaks (the set of open fds is the same after
// every input), an accepted message obeys every limit (region count and fds, no wrap, no overlap,
// vring index < max_queues, NOFD <=> no fd, config within 256 bytes) and re-encodes to a message
// that parses again to the same bytes; a refused one has a "vhost-user" error line.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "fuzz_input.hpp"
#include "iovirt/virtio/vhost_user/protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace vu = iovirt::virtio::vhost_user;
using iovirt::Fd;
using iovirt::fuzz::open_fds;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void check_accepted(const vu::Message& m, const vu::Limits& lim) {
  std::visit(
      [&](const auto& b) {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, vu::MemTable>) {
          check(!b.regions.empty() && b.regions.size() <= lim.max_mem_slots &&
                b.regions.size() <= 8);
          check(b.regions.size() == b.fds.size());
          for (size_t i = 0; i < b.regions.size(); ++i) {
            const auto& r = b.regions[i];
            check(b.fds[i].valid());
            check(r.memory_size != 0);
            check(r.guest_phys_addr <= UINT64_MAX - (r.memory_size - 1));
            check(r.userspace_addr <= UINT64_MAX - (r.memory_size - 1));
            check(r.mmap_offset <= UINT64_MAX - (r.memory_size - 1));
            for (size_t j = 0; j < i; ++j) {
              const auto& o = b.regions[j];
              check(r.guest_phys_addr + (r.memory_size - 1) < o.guest_phys_addr ||
                    o.guest_phys_addr + (o.memory_size - 1) < r.guest_phys_addr);
            }
          }
        } else if constexpr (std::is_same_v<T, vu::VringFd>) {
          check(b.index < lim.max_queues);
        } else if constexpr (std::is_same_v<T, vu::VringState>) {
          check(b.index < lim.max_queues);
          if (m.request == vu::Request::SetVringNum)
            check(b.num != 0 && b.num <= 32768 && (b.num & (b.num - 1)) == 0);
        } else if constexpr (std::is_same_v<T, vu::VringAddr>) {
          check(b.index < lim.max_queues);
        } else if constexpr (std::is_same_v<T, vu::Config>) {
          check(b.data.size() <= 256 && b.offset + b.data.size() <= 256);
        } else if constexpr (std::is_same_v<T, vu::SingleRegion>) {
          check(b.region.memory_size != 0);
          check(b.region.guest_phys_addr <= UINT64_MAX - (b.region.memory_size - 1));
          check((m.request == vu::Request::AddMemReg) == b.fd.valid());
        } else if constexpr (std::is_same_v<T, vu::Inflight>) {
          if (b.fd.valid()) check(b.info.mmap_size != 0 && b.info.num_queues <= lim.max_queues);
        }
      },
      m.body);
  // Round trip: the encoding of an accepted message parses again, to the same bytes.
  auto e = vu::encode(m);
  check(e.has_value());
  std::vector<Fd> dups;
  for (int f : e->fds) {
    dups.emplace_back(::fcntl(f, F_DUPFD_CLOEXEC, 0));
    check(dups.back().valid());
  }
  auto again = vu::parse(std::span<const uint8_t>(e->bytes), std::move(dups),
                         m.is_reply() ? vu::Role::Frontend : vu::Role::Backend, lim);
  check(again.has_value());
  auto e2 = vu::encode(*again);
  check(e2.has_value() && e2->bytes == e->bytes && e2->fds.size() == e->fds.size());
}

void check_refused(const iovirt::Error& err) {
  check(err.message().rfind("vhost-user", 0) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t mode = size > 0 ? data[0] : 0;
  const unsigned nfds = (size > 1 ? data[1] : 0) % 11;
  vu::Limits lim;
  lim.max_queues = (size > 2 ? data[2] : 0) % 9;
  lim.max_mem_slots = (size > 3 ? data[3] : 0) % 10u;
  const std::span<const uint8_t> bytes =
      size > 4 ? std::span<const uint8_t>(data + 4, size - 4) : std::span<const uint8_t>();
  const vu::Role role = (mode & 1) != 0 ? vu::Role::Frontend : vu::Role::Backend;

  const size_t before = open_fds();
  {
    std::vector<Fd> fds;
    for (unsigned i = 0; i < nfds; ++i) {
      fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
      check(fds.back().valid());
    }
    if ((mode & 2) == 0) {
      auto r = vu::parse(bytes, std::move(fds), role, lim);
      if (r)
        check_accepted(*r, lim);
      else
        check_refused(r.error());
    } else {
      auto p = vu::Connection::pair();
      check(p.has_value());
      std::vector<int> raw;
      for (const Fd& f : fds) raw.push_back(f.get());
      if (raw.size() > 8) raw.resize(8);  // the sender side refuses more; see the unit test
      // Socket buffers are far larger than the input, so this does not block.
      check(p->first.send_raw(bytes, raw).has_value() || bytes.empty());
      fds.clear();
      p->first = vu::Connection(Fd());
      for (int i = 0; i < 64; ++i) {
        auto m = p->second.receive(role, lim);
        if (!m) {
          check_refused(m.error());
          break;
        }
        if (!m->has_value()) break;  // clean EOF
        check_accepted(**m, lim);
      }
    }
  }
  check(open_fds() == before);
  return 0;
}
