// vhost-user protocol library: every message round-trips over a real socketpair with real fds
// (memfd, eventfd) that arrive usable, and a hostile peer's malformed messages are refused with
// the fds that came with them closed.
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "iovirt/virtio/vhost_user/protocol.hpp"

namespace iovirt::virtio::vhost_user {
namespace {

size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

Fd memfd(const std::string& contents) {
  Fd f(::memfd_create("vu-test", MFD_CLOEXEC));
  EXPECT_TRUE(f.valid());
  EXPECT_EQ(::pwrite(f.get(), contents.data(), contents.size(), 0),
            static_cast<ssize_t>(contents.size()));
  return f;
}

std::string read_back(int fd, size_t n) {
  std::string s(n, '\0');
  EXPECT_EQ(::pread(fd, s.data(), n, 0), static_cast<ssize_t>(n));
  return s;
}

Fd eventfd_() {
  return Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

// Writes through `received`, reads back through `original`: they are the same eventfd.
void expect_same_eventfd(int received, int original) {
  const uint64_t one = 1;
  ASSERT_EQ(::write(received, &one, sizeof one), 8);
  uint64_t v = 0;
  ASSERT_EQ(::read(original, &v, sizeof v), 8);
  EXPECT_EQ(v, 1U);
}

struct Pair {
  Connection front{Fd()};
  Connection back{Fd()};
  Pair() {
    auto p = Connection::pair();
    EXPECT_TRUE(p.has_value());
    front = std::move(p->first);
    back = std::move(p->second);
  }
};

Limits limits() {
  return Limits{4, 8};
}

Message roundtrip(Pair& p, const Message& m, Role role = Role::Backend) {
  auto& from = role == Role::Backend ? p.front : p.back;
  auto& to = role == Role::Backend ? p.back : p.front;
  auto s = from.send(m);
  EXPECT_TRUE(s.has_value()) << s.error().message();
  auto r = to.receive(role, limits());
  EXPECT_TRUE(r.has_value()) << r.error().message();
  EXPECT_TRUE(r->has_value());
  EXPECT_EQ((*r)->request, m.request);
  return std::move(**r);
}

MemRegion region(uint64_t gpa, uint64_t size, uint64_t uaddr = 0x7f0000000000, uint64_t off = 0) {
  return MemRegion{gpa, size, uaddr, off};
}

// A message body plus header for the hostile-peer cases; sent raw, bypassing encode().
std::vector<uint8_t> raw(uint32_t req, uint32_t flags, const std::vector<uint8_t>& payload,
                         std::optional<uint32_t> size = std::nullopt) {
  std::vector<uint8_t> out(12);
  const Header h{req, flags, size.value_or(static_cast<uint32_t>(payload.size()))};
  std::memcpy(out.data(), &h, sizeof h);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

template <class T>
std::vector<uint8_t> bytes_of(const T& v) {
  std::vector<uint8_t> b(sizeof v);
  std::memcpy(b.data(), &v, sizeof v);
  return b;
}

std::vector<uint8_t> table(std::vector<MemRegion> regions, uint32_t n = UINT32_MAX) {
  std::vector<uint8_t> b(8);
  const uint32_t count = n == UINT32_MAX ? static_cast<uint32_t>(regions.size()) : n;
  std::memcpy(b.data(), &count, 4);
  for (const auto& r : regions) {
    const auto rb = bytes_of(r);
    b.insert(b.end(), rb.begin(), rb.end());
  }
  return b;
}

// Sends raw bytes with the given fds; returns the receiver's error line (empty if accepted).
std::string refused(const std::vector<uint8_t>& bytes, const std::vector<int>& fds,
                    Role role = Role::Backend) {
  Pair p;
  auto& from = role == Role::Backend ? p.front : p.back;
  auto& to = role == Role::Backend ? p.back : p.front;
  EXPECT_TRUE(from.send_raw(bytes, fds).has_value());
  auto r = to.receive(role, limits());
  if (r.has_value()) return "";
  return r.error().message();
}

// ---------------- round trips ----------------

TEST(VhostUserProtocol, NoPayloadRequestsRoundTrip) {
  Pair p;
  for (Request r :
       {Request::GetFeatures, Request::SetOwner, Request::ResetOwner, Request::GetProtocolFeatures,
        Request::GetQueueNum, Request::GetStatus, Request::GetMaxMemSlots, Request::ResetDevice}) {
    auto m = roundtrip(p, make_request(r, Empty{}, true));
    EXPECT_TRUE(std::holds_alternative<Empty>(m.body)) << request_name(static_cast<uint32_t>(r));
    EXPECT_TRUE(m.need_reply());
    EXPECT_FALSE(m.is_reply());
  }
}

TEST(VhostUserProtocol, U64RequestsRoundTrip) {
  Pair p;
  auto m = roundtrip(p, make_request(Request::SetFeatures, U64{(1ULL << 32) | (1ULL << 30)}));
  EXPECT_EQ(std::get<U64>(m.body).value, (1ULL << 32) | (1ULL << 30));
  m = roundtrip(
      p, make_request(Request::SetProtocolFeatures, U64{1ULL << protocol_feature::kReplyAck}));
  EXPECT_EQ(std::get<U64>(m.body).value, 8U);
  m = roundtrip(p, make_request(Request::SetStatus, U64{0xf}));
  EXPECT_EQ(std::get<U64>(m.body).value, 0xfU);
}

TEST(VhostUserProtocol, MemTableRoundTripsWithUsableMemfds) {
  Pair p;
  MemTable t;
  t.regions = {region(0, 0x1000, 0x10000), region(0x100000, 0x2000, 0x20000, 0x1000)};
  t.fds.push_back(memfd("region zero"));
  t.fds.push_back(memfd("region one"));
  auto m = roundtrip(p, make_request(Request::SetMemTable, std::move(t), true));
  auto& got = std::get<MemTable>(m.body);
  ASSERT_EQ(got.regions.size(), 2U);
  ASSERT_EQ(got.fds.size(), 2U);
  EXPECT_EQ(got.regions[1].guest_phys_addr, 0x100000U);
  EXPECT_EQ(got.regions[1].mmap_offset, 0x1000U);
  EXPECT_EQ(read_back(got.fds[0].get(), 11), "region zero");
  EXPECT_EQ(read_back(got.fds[1].get(), 10), "region one");
}

TEST(VhostUserProtocol, FullSizedMemTableIsAccepted) {
  // A sender of the whole C struct (264 bytes) with 1 region is fine too.
  MemTableWire w{};
  w.nregions = 1;
  w.regions[0] = region(0, 0x1000);
  Fd f = memfd("x");
  EXPECT_EQ(refused(raw(5, kVersion, bytes_of(w)), {f.get()}), "");
}

TEST(VhostUserProtocol, VringMessagesRoundTrip) {
  Pair p;
  auto m = roundtrip(p, make_request(Request::SetVringNum, VringState{3, 256}));
  EXPECT_EQ(std::get<VringState>(m.body).index, 3U);
  EXPECT_EQ(std::get<VringState>(m.body).num, 256U);
  m = roundtrip(p, make_request(Request::SetVringBase, VringState{1, 17}));
  EXPECT_EQ(std::get<VringState>(m.body).num, 17U);
  m = roundtrip(p, make_request(Request::GetVringBase, VringState{2, 0}));
  EXPECT_EQ(std::get<VringState>(m.body).index, 2U);
  m = roundtrip(p, make_request(Request::SetVringEnable, VringState{0, 1}));
  EXPECT_EQ(std::get<VringState>(m.body).num, 1U);
  m = roundtrip(p, make_request(Request::SetVringAddr,
                                VringAddr{1, kVringFlagLog, 0x1000, 0x3000, 0x2000, 0x9000}));
  const auto& a = std::get<VringAddr>(m.body);
  EXPECT_EQ(a.index, 1U);
  EXPECT_EQ(a.flags, kVringFlagLog);
  EXPECT_EQ(a.desc_user_addr, 0x1000U);
  EXPECT_EQ(a.used_user_addr, 0x3000U);
  EXPECT_EQ(a.avail_user_addr, 0x2000U);
  EXPECT_EQ(a.log_guest_addr, 0x9000U);
}

TEST(VhostUserProtocol, KickCallErrCarryUsableEventfds) {
  Pair p;
  for (Request r : {Request::SetVringKick, Request::SetVringCall, Request::SetVringErr}) {
    Fd ev = eventfd_();
    const int orig = ev.get();
    VringFd body{3, std::move(ev)};
    Message sent = make_request(r, std::move(body));
    auto m = roundtrip(p, sent);
    auto& got = std::get<VringFd>(m.body);
    EXPECT_EQ(got.index, 3U);
    ASSERT_TRUE(got.fd.valid());
    EXPECT_NE(got.fd.get(), orig);
    expect_same_eventfd(got.fd.get(), orig);
    // NOFD: no fd travels, the receiver sees an invalid Fd.
    auto n = roundtrip(p, make_request(r, VringFd{1, Fd()}));
    EXPECT_FALSE(std::get<VringFd>(n.body).fd.valid());
    EXPECT_EQ(std::get<VringFd>(n.body).index, 1U);
  }
}

TEST(VhostUserProtocol, ConfigRoundTrips) {
  Pair p;
  std::vector<uint8_t> data(16);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 3);
  auto m = roundtrip(p, make_request(Request::SetConfig, Config{8, 0, data}));
  EXPECT_EQ(std::get<Config>(m.body).offset, 8U);
  EXPECT_EQ(std::get<Config>(m.body).data, data);
  m = roundtrip(p, make_request(Request::GetConfig, Config{0, 0, std::vector<uint8_t>(256)}));
  EXPECT_EQ(std::get<Config>(m.body).data.size(), 256U);
  // The back-end's reply to GET_CONFIG.
  m = roundtrip(p, make_reply(Request::GetConfig, Config{0, 0, data}), Role::Frontend);
  EXPECT_TRUE(m.is_reply());
  EXPECT_EQ(std::get<Config>(m.body).data, data);
}

TEST(VhostUserProtocol, InflightRoundTrips) {
  Pair p;
  auto m = roundtrip(
      p, make_request(Request::GetInflightFd, Inflight{InflightWire{0, 0, 2, 256, 0}, Fd()}));
  EXPECT_EQ(std::get<Inflight>(m.body).info.num_queues, 2U);
  EXPECT_EQ(std::get<Inflight>(m.body).info.queue_size, 256U);
  // Reply with the area.
  m = roundtrip(p,
                make_reply(Request::GetInflightFd,
                           Inflight{InflightWire{4096, 0, 2, 256, 0}, memfd("inflight")}),
                Role::Frontend);
  EXPECT_EQ(read_back(std::get<Inflight>(m.body).fd.get(), 8), "inflight");
  m = roundtrip(p, make_request(Request::SetInflightFd,
                                Inflight{InflightWire{4096, 0, 2, 256, 0}, memfd("again")}));
  EXPECT_EQ(std::get<Inflight>(m.body).info.mmap_size, 4096U);
  EXPECT_EQ(read_back(std::get<Inflight>(m.body).fd.get(), 5), "again");
}

TEST(VhostUserProtocol, MemSlotAndLogMessagesRoundTrip) {
  Pair p;
  auto m = roundtrip(
      p, make_request(Request::AddMemReg, SingleRegion{region(0x200000, 0x1000), memfd("slot")}));
  EXPECT_EQ(std::get<SingleRegion>(m.body).region.guest_phys_addr, 0x200000U);
  EXPECT_EQ(read_back(std::get<SingleRegion>(m.body).fd.get(), 4), "slot");
  m = roundtrip(p, make_request(Request::RemMemReg, SingleRegion{region(0x200000, 0x1000), Fd()}));
  EXPECT_FALSE(std::get<SingleRegion>(m.body).fd.valid());
  m = roundtrip(p, make_request(Request::SetLogBase, LogBase{LogWire{0x1000, 0}, memfd("log")}));
  EXPECT_EQ(read_back(std::get<LogBase>(m.body).fd.get(), 3), "log");
  Fd ev = eventfd_();
  const int orig = ev.get();
  const Message sent = make_request(Request::SetLogFd, LogFd{std::move(ev)});  // keeps orig open
  m = roundtrip(p, sent);
  expect_same_eventfd(std::get<LogFd>(m.body).fd.get(), orig);
}

TEST(VhostUserProtocol, RepliesRoundTrip) {
  Pair p;
  for (Request r : {Request::GetFeatures, Request::GetProtocolFeatures, Request::GetQueueNum,
                    Request::GetMaxMemSlots, Request::GetStatus}) {
    auto m = roundtrip(p, make_reply(r, U64{0x1234}), Role::Frontend);
    EXPECT_EQ(std::get<U64>(m.body).value, 0x1234U);
  }
  auto m = roundtrip(p, make_reply(Request::GetVringBase, VringState{1, 99}), Role::Frontend);
  EXPECT_EQ(std::get<VringState>(m.body).num, 99U);
  // REPLY_ACK for a SET request.
  m = roundtrip(p, make_ack(Request::SetMemTable, 0), Role::Frontend);
  EXPECT_EQ(std::get<U64>(m.body).value, 0U);
}

TEST(VhostUserProtocol, EncodeRefusesBodiesThatDoNotFitTheWire) {
  MemTable t;
  for (uint64_t i = 0; i < 9; ++i) t.regions.push_back(region(i << 20, 0x1000));
  EXPECT_FALSE(encode(make_request(Request::SetMemTable, std::move(t))).has_value());
  EXPECT_FALSE(encode(make_request(Request::SetMemTable, MemTable{})).has_value());
  EXPECT_FALSE(encode(make_request(Request::SetConfig, Config{0, 0, std::vector<uint8_t>(257)}))
                   .has_value());
  // And send() says so instead of putting a bad message on the wire.
  Pair p;
  EXPECT_FALSE(p.front.send(make_request(Request::SetMemTable, MemTable{})).has_value());
}

TEST(VhostUserProtocol, CleanEofBetweenMessagesIsNotAnError) {
  Pair p;
  p.front = Connection(Fd());
  auto r = p.back.recv();
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->has_value());
}

// ---------------- hostile peer ----------------

TEST(VhostUserHostile, TruncatedHeaderIsAnError) {
  Pair p;
  const uint8_t five[5] = {1, 0, 0, 0, 1};
  ASSERT_TRUE(p.front.send_raw(five, {}).has_value());
  p.front = Connection(Fd());
  auto r = p.back.recv();
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("inside a message"), std::string::npos) << r.error().message();
}

TEST(VhostUserHostile, EofMidPayloadIsAnErrorAndClosesFds) {
  const size_t before = open_fds();
  {
    Pair p;
    Fd m = memfd("x");
    auto bytes = raw(5, kVersion, table({region(0, 0x1000)}));
    bytes.resize(bytes.size() - 5);  // header says 40 bytes, 35 come
    ASSERT_TRUE(p.front.send_raw(bytes, std::vector<int>{m.get()}).has_value());
    m.reset();
    p.front = Connection(Fd());
    auto r = p.back.recv();
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("SET_MEM_TABLE payload"), std::string::npos)
        << r.error().message();
  }
  EXPECT_EQ(open_fds(), before);
}

TEST(VhostUserHostile, OversizedPayloadRefusedBeforeReading) {
  auto e = refused(raw(24, kVersion, {}, kMaxPayload + 1), {});
  EXPECT_NE(e.find("above the 4096-byte limit"), std::string::npos) << e;
}

TEST(VhostUserHostile, WrongSizes) {
  EXPECT_NE(
      refused(raw(1, kVersion, {0, 0, 0, 0}), {}).find("GET_FEATURES: payload size 4, expected 0"),
      std::string::npos);
  EXPECT_NE(refused(raw(2, kVersion, {1, 2, 3}), {}).find("SET_FEATURES: payload size 3"),
            std::string::npos);
  EXPECT_NE(refused(raw(8, kVersion, std::vector<uint8_t>(12)), {})
                .find("SET_VRING_NUM: payload size 12"),
            std::string::npos);
  EXPECT_NE(refused(raw(9, kVersion, std::vector<uint8_t>(39)), {}).find("SET_VRING_ADDR"),
            std::string::npos);
  // Table payload not matching nregions.
  auto t = table({region(0, 0x1000), region(0x1000, 0x1000)}, 1);
  Fd a = memfd("a");
  EXPECT_NE(refused(raw(5, kVersion, t), {a.get()}).find("does not match nregions 1"),
            std::string::npos);
  // Config: size field larger than the bytes sent; offset + size beyond 256.
  EXPECT_NE(refused(raw(25, kVersion, bytes_of(ConfigWireHeader{0, 8, 0})), {})
                .find("does not match config size"),
            std::string::npos);
  EXPECT_NE(
      refused(raw(25, kVersion, bytes_of(ConfigWireHeader{250, 8, 0})), {}).find("beyond 256"),
      std::string::npos);
  EXPECT_NE(refused(raw(25, kVersion, bytes_of(ConfigWireHeader{0, 300, 0})), {}).find("above 256"),
            std::string::npos);
}

TEST(VhostUserHostile, RegionCounts) {
  std::vector<MemRegion> nine;
  for (uint64_t i = 0; i < 9; ++i) nine.push_back(region(i << 20, 0x1000));
  EXPECT_NE(refused(raw(5, kVersion, table(nine)), {}).find("nregions 9 out of range 1..8"),
            std::string::npos);
  EXPECT_NE(refused(raw(5, kVersion, table({})), {}).find("nregions 0 out of range"),
            std::string::npos);
  // The caller's mem-slot limit applies too.
  Pair p;
  ASSERT_TRUE(
      p.front.send_raw(raw(5, kVersion, table({region(0, 0x1000), region(0x1000, 0x1000)})), {})
          .has_value());
  auto r = p.back.receive(Role::Backend, Limits{4, 1});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("out of range 1..1"), std::string::npos)
      << r.error().message();
}

TEST(VhostUserHostile, MissingAndExtraFdsAreRefusedAndClosed) {
  const size_t before = open_fds();
  {
    Fd a = memfd("a"), b = memfd("b"), c = eventfd_();
    // Two regions, one fd.
    EXPECT_NE(
        refused(raw(5, kVersion, table({region(0, 0x1000), region(0x1000, 0x1000)})), {a.get()})
            .find("1 file descriptors attached for 2 regions"),
        std::string::npos);
    // One region, three fds.
    EXPECT_NE(refused(raw(5, kVersion, table({region(0, 0x1000)})), {a.get(), b.get(), c.get()})
                  .find("3 file descriptors attached for 1 regions"),
              std::string::npos);
    // Messages that take no fd, with fds.
    EXPECT_NE(
        refused(raw(3, kVersion, {}), {a.get(), b.get()}).find("SET_OWNER: 2 file descriptors"),
        std::string::npos);
    EXPECT_NE(refused(raw(24, kVersion, bytes_of(ConfigWireHeader{0, 0, 0})), {c.get()})
                  .find("GET_CONFIG: 1 file"),
              std::string::npos);
    // Kick without an fd and without NOFD.
    EXPECT_NE(refused(raw(12, kVersion, bytes_of(uint64_t{1})), {}).find("NOFD clear (expected 1)"),
              std::string::npos);
    // ADD_MEM_REG without fd; SET_INFLIGHT_FD without fd.
    EXPECT_NE(refused(raw(37, kVersion, bytes_of(SingleMemRegionWire{0, region(0, 0x1000)})), {})
                  .find("ADD_MEM_REG: 0 file descriptors attached, expected 1"),
              std::string::npos);
    EXPECT_NE(refused(raw(32, kVersion, bytes_of(InflightWire{4096, 0, 1, 256, 0})), {})
                  .find("SET_INFLIGHT_FD"),
              std::string::npos);
    // REM_MEM_REG may carry one fd (spec compatibility); it is closed, not used.
    EXPECT_EQ(
        refused(raw(38, kVersion, bytes_of(SingleMemRegionWire{0, region(0, 0x1000)})), {a.get()}),
        "");
  }
  EXPECT_EQ(open_fds(), before);
}

TEST(VhostUserHostile, MoreThanEightFdsTruncateAndAreClosed) {
  const size_t before = open_fds();
  {
    Pair p;
    std::vector<Fd> evs;
    std::vector<int> raw_fds;
    for (int i = 0; i < 12; ++i) {
      evs.push_back(eventfd_());
      raw_fds.push_back(evs.back().get());
    }
    // send_raw refuses more than 8; a hostile peer uses sendmsg directly.
    auto bytes = raw(3, kVersion, {});
    iovec iov{bytes.data(), bytes.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(12 * sizeof(int))] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(12 * sizeof(int));
    std::memcpy(CMSG_DATA(c), raw_fds.data(), 12 * sizeof(int));
    ASSERT_EQ(::sendmsg(p.front.fd(), &mh, 0), static_cast<ssize_t>(bytes.size()));
    auto r = p.back.recv();
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("truncated"), std::string::npos) << r.error().message();
  }
  EXPECT_EQ(open_fds(), before);
}

TEST(VhostUserHostile, OverlappingAndWrappingRegions) {
  Fd a = memfd("a"), b = memfd("b");
  EXPECT_NE(refused(raw(5, kVersion, table({region(0, 0x2000), region(0x1000, 0x1000)})),
                    {a.get(), b.get()})
                .find("region 1 guest range 0x1000+0x1000 overlaps region 0"),
            std::string::npos);
  EXPECT_NE(refused(raw(5, kVersion, table({region(0x10000, 0x1000), region(0, 0x10001)})),
                    {a.get(), b.get()})
                .find("overlaps region 0"),
            std::string::npos);
  EXPECT_NE(refused(raw(5, kVersion, table({region(UINT64_MAX - 0xfff, 0x2000)})), {a.get()})
                .find("region 0 guest_phys_addr 0xfffffffffffff000 + memory_size 0x2000 wraps"),
            std::string::npos);
  EXPECT_NE(refused(raw(5, kVersion, table({region(0, 0x2000, UINT64_MAX)})), {a.get()})
                .find("userspace_addr"),
            std::string::npos);
  EXPECT_NE(refused(raw(5, kVersion, table({region(0, 0x2000, 0, UINT64_MAX - 1)})), {a.get()})
                .find("mmap_offset"),
            std::string::npos);
  EXPECT_NE(refused(raw(5, kVersion, table({region(0, 0)})), {a.get()}).find("memory_size is 0"),
            std::string::npos);
  // The last byte of the address space is fine.
  EXPECT_EQ(refused(raw(5, kVersion, table({region(UINT64_MAX - 0xfff, 0x1000, 0)})), {a.get()}),
            "");
  EXPECT_NE(
      refused(raw(37, kVersion, bytes_of(SingleMemRegionWire{0, region(UINT64_MAX, 2)})), {a.get()})
          .find("ADD_MEM_REG: region guest_phys_addr"),
      std::string::npos);
}

TEST(VhostUserHostile, VringFieldsOutOfRange) {
  EXPECT_NE(refused(raw(8, kVersion, bytes_of(VringState{4, 256})), {})
                .find("vring index 4 out of range (max_queues 4)"),
            std::string::npos);
  EXPECT_NE(refused(raw(8, kVersion, bytes_of(VringState{0, 100})), {}).find("not a power of two"),
            std::string::npos);
  EXPECT_NE(
      refused(raw(8, kVersion, bytes_of(VringState{0, 65536})), {}).find("not a power of two"),
      std::string::npos);
  EXPECT_NE(refused(raw(8, kVersion, bytes_of(VringState{0, 0})), {}).find("not a power of two"),
            std::string::npos);
  EXPECT_NE(
      refused(raw(9, kVersion, bytes_of(VringAddr{9, 0, 0, 0, 0, 0})), {}).find("vring index 9"),
      std::string::npos);
  EXPECT_NE(refused(raw(9, kVersion, bytes_of(VringAddr{0, 2, 0, 0, 0, 0})), {})
                .find("vring flags 0x2 unknown"),
            std::string::npos);
  EXPECT_NE(refused(raw(9, kVersion, bytes_of(VringAddr{0, 0, 8, 0, 0, 0})), {})
                .find("desc_user_addr 0x8 not 16"),
            std::string::npos);
  EXPECT_NE(refused(raw(11, kVersion, bytes_of(VringState{200, 0})), {})
                .find("GET_VRING_BASE: vring index 200"),
            std::string::npos);
  EXPECT_NE(refused(raw(18, kVersion, bytes_of(VringState{0, 2})), {}).find("not 0 or 1"),
            std::string::npos);
  EXPECT_NE(refused(raw(13, kVersion, bytes_of(uint64_t{0x105})), {})
                .find("SET_VRING_CALL: vring index 5"),
            std::string::npos);
  EXPECT_NE(
      refused(raw(13, kVersion, bytes_of(uint64_t{0x200})), {}).find("bits above index and NOFD"),
      std::string::npos);
  EXPECT_NE(
      refused(raw(32, kVersion, bytes_of(InflightWire{4096, 0, 9, 256, 0})), {eventfd_().get()})
          .find("inflight num_queues 9"),
      std::string::npos);
}

TEST(VhostUserHostile, NofdWithAnFdIsRefusedAndTheFdClosed) {
  const size_t before = open_fds();
  {
    Fd ev = eventfd_();
    EXPECT_NE(refused(raw(12, kVersion, bytes_of(uint64_t{kVringNoFd | 1})), {ev.get()})
                  .find("SET_VRING_KICK: 1 file descriptors attached with NOFD set (expected 0)"),
              std::string::npos);
  }
  EXPECT_EQ(open_fds(), before);
}

TEST(VhostUserHostile, BadFlagsAndUnknownRequests) {
  EXPECT_NE(refused(raw(1, 0, {}), {}).find("GET_FEATURES: flags 0x0: version 0 is not 1"),
            std::string::npos);
  EXPECT_NE(refused(raw(1, 2, {}), {}).find("version 2 is not 1"), std::string::npos);
  EXPECT_NE(refused(raw(1, kVersion | 0x10, {}), {}).find("unknown bits"), std::string::npos);
  EXPECT_NE(refused(raw(1, kVersion | kFlagReply, {}), {}).find("REPLY flag set on a request"),
            std::string::npos);
  EXPECT_NE(refused(raw(1, kVersion, bytes_of(uint64_t{0})), {}, Role::Frontend)
                .find("REPLY flag missing"),
            std::string::npos);
  EXPECT_NE(refused(raw(99, kVersion, {}), {}).find("vhost-user request 99: unknown request"),
            std::string::npos);
  EXPECT_NE(refused(raw(0, kVersion, {}), {}).find("unknown request"), std::string::npos);
  EXPECT_NE(refused(raw(22, kVersion, {}), {}).find("IOTLB_MSG: request not supported"),
            std::string::npos);
  EXPECT_NE(refused(raw(99, kVersion | kFlagReply, bytes_of(uint64_t{0})), {}, Role::Frontend)
                .find("unknown request"),
            std::string::npos);
  EXPECT_NE(refused(raw(39, kVersion, bytes_of(uint64_t{0x100})), {}).find("device status 0x100"),
            std::string::npos);
}

TEST(VhostUserHostile, ErrorIsOneLineNamingMessageAndField) {
  Fd a = memfd("a");
  const auto e = refused(raw(5, kVersion, table({region(0, 0x1000, UINT64_MAX)})), {a.get()});
  EXPECT_EQ(e.rfind("vhost-user SET_MEM_TABLE: region 0 userspace_addr 0xffffffffffffffff", 0), 0U)
      << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
  const uint8_t b[12] = {5, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
  auto r = parse(std::span<const uint8_t>(b), {}, Role::Backend, Limits{});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().what(),
            "vhost-user SET_MEM_TABLE: payload size 0 below the 8-byte table header");
}

TEST(VhostUserHostile, ParseFromBytesRejectsShortInput) {
  const uint8_t b[3] = {};
  auto r = parse(std::span<const uint8_t>(b), {}, Role::Backend, Limits{});
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("shorter than the 12-byte header"), std::string::npos);
}

}  // namespace
}  // namespace iovirt::virtio::vhost_user
