// vhost-user message parsing, encoding and framing. See vhost_user/protocol.hpp.
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "iovirt/core/hex.hpp"
#include "iovirt/virtio/vhost_user/protocol.hpp"

namespace iovirt::virtio::vhost_user {

namespace {

// Propagate an error line unchanged: it already names the message and the field.
#define VU_CHECK(expr)                                              \
  do {                                                              \
    auto vu_st_ = (expr);                                           \
    if (!vu_st_) return std::unexpected(std::move(vu_st_.error())); \
  } while (0)
#define VU_TRY(var, expr)                                           \
  auto var##_r = (expr);                                            \
  if (!var##_r) return std::unexpected(std::move(var##_r.error())); \
  auto var = std::move(*var##_r)

constexpr const char* kNames[] = {
    "NONE",
    "GET_FEATURES",
    "SET_FEATURES",
    "SET_OWNER",
    "RESET_OWNER",
    "SET_MEM_TABLE",
    "SET_LOG_BASE",
    "SET_LOG_FD",
    "SET_VRING_NUM",
    "SET_VRING_ADDR",
    "SET_VRING_BASE",
    "GET_VRING_BASE",
    "SET_VRING_KICK",
    "SET_VRING_CALL",
    "SET_VRING_ERR",
    "GET_PROTOCOL_FEATURES",
    "SET_PROTOCOL_FEATURES",
    "GET_QUEUE_NUM",
    "SET_VRING_ENABLE",
    "SEND_RARP",
    "NET_SET_MTU",
    "SET_BACKEND_REQ_FD",
    "IOTLB_MSG",
    "SET_VRING_ENDIAN",
    "GET_CONFIG",
    "SET_CONFIG",
    "CREATE_CRYPTO_SESSION",
    "CLOSE_CRYPTO_SESSION",
    "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN",
    "POSTCOPY_END",
    "GET_INFLIGHT_FD",
    "SET_INFLIGHT_FD",
    "GPU_SET_SOCKET",
    "RESET_DEVICE",
    "VRING_KICK",
    "GET_MAX_MEM_SLOTS",
    "ADD_MEM_REG",
    "REM_MEM_REG",
    "SET_STATUS",
    "GET_STATUS",
};

// "vhost-user SET_MEM_TABLE: <what>"
std::unexpected<Error> bad(uint32_t request, const std::string& what) {
  std::string s = "vhost-user ";
  s += request_name(request);
  s += ": ";
  s += what;
  return fail(std::move(s), EPROTO);
}

template <class T>
T load(std::span<const uint8_t> p) {
  T v{};
  std::memcpy(&v, p.data(), sizeof v);
  return v;
}

bool is_pow2(uint32_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

// The payload size and fd count every fixed-size message must have.
Status expect(uint32_t req, std::span<const uint8_t> payload, size_t want_size, size_t nfds,
              size_t want_fds) {
  if (payload.size() != want_size)
    return bad(req, "payload size " + std::to_string(payload.size()) + ", expected " +
                        std::to_string(want_size));
  if (nfds != want_fds)
    return bad(req, std::to_string(nfds) + " file descriptors attached, expected " +
                        std::to_string(want_fds));
  return {};
}

Status check_index(uint32_t req, uint64_t index, const Limits& limits) {
  if (index >= limits.max_queues)
    return bad(req, "vring index " + std::to_string(index) + " out of range (max_queues " +
                        std::to_string(limits.max_queues) + ")");
  return {};
}

Status check_region(uint32_t req, const std::string& which, const MemRegion& r) {
  if (r.memory_size == 0) return bad(req, which + " memory_size is 0");
  const uint64_t last = r.memory_size - 1;
  if (r.guest_phys_addr > UINT64_MAX - last)
    return bad(req, which + " guest_phys_addr " + hex(r.guest_phys_addr) + " + memory_size " +
                        hex(r.memory_size) + " wraps");
  if (r.userspace_addr > UINT64_MAX - last)
    return bad(req, which + " userspace_addr " + hex(r.userspace_addr) + " + memory_size " +
                        hex(r.memory_size) + " wraps");
  if (r.mmap_offset > UINT64_MAX - last)
    return bad(req, which + " mmap_offset " + hex(r.mmap_offset) + " + memory_size " +
                        hex(r.memory_size) + " wraps");
  return {};
}

Result<Config> parse_config(uint32_t req, std::span<const uint8_t> payload) {
  if (payload.size() < sizeof(ConfigWireHeader))
    return bad(
        req, "payload size " + std::to_string(payload.size()) + " below the 12-byte config header");
  const auto h = load<ConfigWireHeader>(payload);
  if (h.size > kMaxConfigSize)
    return bad(req, "config size " + std::to_string(h.size) + " above 256");
  if (uint64_t{h.offset} + h.size > kMaxConfigSize)
    return bad(req, "config offset " + std::to_string(h.offset) + " + size " +
                        std::to_string(h.size) + " beyond 256");
  if (payload.size() != sizeof(ConfigWireHeader) + h.size)
    return bad(req, "payload size " + std::to_string(payload.size()) +
                        " does not match config size " + std::to_string(h.size) + " + 12");
  if (h.flags > 1)  // 0: front-end access, 1: live migration
    return bad(req, "config flags " + hex(h.flags) + " unknown");
  Config c{h.offset, h.flags, {}};
  c.data.assign(payload.begin() + sizeof(ConfigWireHeader), payload.end());
  return c;
}

Status check_inflight(uint32_t req, const InflightWire& w, const Limits& limits, bool need_map) {
  if (need_map) {
    if (w.mmap_size == 0) return bad(req, "inflight mmap_size is 0");
    if (w.mmap_offset > UINT64_MAX - w.mmap_size)
      return bad(req, "inflight mmap_offset " + hex(w.mmap_offset) + " + mmap_size " +
                          hex(w.mmap_size) + " wraps");
  }
  if (w.num_queues == 0 || w.num_queues > limits.max_queues)
    return bad(req, "inflight num_queues " + std::to_string(w.num_queues) + " out of range 1.." +
                        std::to_string(limits.max_queues));
  if (w.queue_size == 0 || w.queue_size > kMaxQueueSize)
    return bad(req,
               "inflight queue_size " + std::to_string(w.queue_size) + " out of range 1..32768");
  return {};
}

Result<Body> parse_request(uint32_t req, std::span<const uint8_t> p, std::vector<Fd>& fds,
                           const Limits& limits) {
  const size_t nfds = fds.size();
  switch (static_cast<Request>(req)) {
    case Request::GetFeatures:
    case Request::SetOwner:
    case Request::ResetOwner:
    case Request::GetProtocolFeatures:
    case Request::GetQueueNum:
    case Request::GetStatus:
    case Request::GetMaxMemSlots:
    case Request::ResetDevice:
      VU_CHECK(expect(req, p, 0, nfds, 0));
      return Body{Empty{}};
    case Request::SetFeatures:
    case Request::SetProtocolFeatures:
    case Request::SetStatus: {
      VU_CHECK(expect(req, p, 8, nfds, 0));
      const auto v = load<uint64_t>(p);
      if (static_cast<Request>(req) == Request::SetStatus && v > 0xff)
        return bad(req, "device status " + hex(v) + " above 0xff");
      return Body{U64{v}};
    }
    case Request::SetMemTable: {
      if (p.size() < kMemTableHeaderSize)
        return bad(req,
                   "payload size " + std::to_string(p.size()) + " below the 8-byte table header");
      const uint32_t n = load<uint32_t>(p);
      const uint32_t max = std::min(limits.max_mem_slots, kMaxMemTableRegions);
      if (n == 0 || n > max)
        return bad(req,
                   "nregions " + std::to_string(n) + " out of range 1.." + std::to_string(max));
      // QEMU sends 8 + n * 32; a sender of the whole C struct sends 264. Both carry n regions.
      const size_t exact = kMemTableHeaderSize + size_t{n} * sizeof(MemRegion);
      if (p.size() != exact && p.size() != sizeof(MemTableWire))
        return bad(req, "payload size " + std::to_string(p.size()) + " does not match nregions " +
                            std::to_string(n) + " (expected " + std::to_string(exact) + ")");
      if (nfds != n)
        return bad(req, std::to_string(nfds) + " file descriptors attached for " +
                            std::to_string(n) + " regions");
      MemTable t;
      t.regions.reserve(n);
      for (uint32_t i = 0; i < n; ++i) {
        const auto r = load<MemRegion>(p.subspan(kMemTableHeaderSize + i * sizeof(MemRegion)));
        VU_CHECK(check_region(req, "region " + std::to_string(i), r));
        for (uint32_t j = 0; j < i; ++j) {
          const MemRegion& o = t.regions[j];
          // Both ranges are known not to wrap, so the inclusive ends are exact.
          if (r.guest_phys_addr <= o.guest_phys_addr + (o.memory_size - 1) &&
              o.guest_phys_addr <= r.guest_phys_addr + (r.memory_size - 1))
            return bad(req, "region " + std::to_string(i) + " guest range " +
                                hex(r.guest_phys_addr) + "+" + hex(r.memory_size) +
                                " overlaps region " + std::to_string(j));
        }
        t.regions.push_back(r);
      }
      t.fds = std::move(fds);
      return Body{std::move(t)};
    }
    case Request::SetLogBase: {
      VU_CHECK(expect(req, p, sizeof(LogWire), nfds, 1));
      const auto w = load<LogWire>(p);
      if (w.mmap_size == 0) return bad(req, "log mmap_size is 0");
      if (w.mmap_offset > UINT64_MAX - w.mmap_size)
        return bad(req, "log mmap_offset " + hex(w.mmap_offset) + " + mmap_size wraps");
      return Body{LogBase{w, std::move(fds[0])}};
    }
    case Request::SetLogFd:
      VU_CHECK(expect(req, p, 0, nfds, 1));
      return Body{LogFd{std::move(fds[0])}};
    case Request::SetVringNum: {
      VU_CHECK(expect(req, p, sizeof(VringState), nfds, 0));
      const auto s = load<VringState>(p);
      VU_CHECK(check_index(req, s.index, limits));
      // Split rings need a power of two (virtio 1.2 2.7); packed rings merely <= 32768, but the
      // protocol carries no ring layout, so the strict rule applies to both.
      if (!is_pow2(s.num) || s.num > kMaxQueueSize)
        return bad(req,
                   "vring num " + std::to_string(s.num) + " is not a power of two in 1..32768");
      return Body{s};
    }
    case Request::SetVringAddr: {
      VU_CHECK(expect(req, p, sizeof(VringAddr), nfds, 0));
      const auto a = load<VringAddr>(p);
      VU_CHECK(check_index(req, a.index, limits));
      if ((a.flags & ~kVringFlagLog) != 0)
        return bad(req, "vring flags " + hex(a.flags) + " unknown");
      // Alignment of the split ring parts (virtio 1.2 2.7): desc 16, avail 2, used 4.
      if (a.desc_user_addr % 16 != 0)
        return bad(req, "desc_user_addr " + hex(a.desc_user_addr) + " not 16-byte aligned");
      if (a.avail_user_addr % 2 != 0)
        return bad(req, "avail_user_addr " + hex(a.avail_user_addr) + " not 2-byte aligned");
      if (a.used_user_addr % 4 != 0)
        return bad(req, "used_user_addr " + hex(a.used_user_addr) + " not 4-byte aligned");
      return Body{a};
    }
    case Request::SetVringBase:
    case Request::GetVringBase:
    case Request::SetVringEnable: {
      VU_CHECK(expect(req, p, sizeof(VringState), nfds, 0));
      const auto s = load<VringState>(p);
      VU_CHECK(check_index(req, s.index, limits));
      // SET_VRING_BASE: any 32 bits here (a packed ring's may carry the used state in the upper
      // half); the back-end, which knows the ring format, checks them.
      if (static_cast<Request>(req) == Request::SetVringEnable && s.num > 1)
        return bad(req, "enable value " + std::to_string(s.num) + " is not 0 or 1");
      return Body{s};
    }
    case Request::SetVringKick:
    case Request::SetVringCall:
    case Request::SetVringErr: {
      if (p.size() != 8)
        return bad(req, "payload size " + std::to_string(p.size()) + ", expected 8");
      const auto v = load<uint64_t>(p);
      if ((v & ~(kVringIndexMask | kVringNoFd)) != 0)
        return bad(req, "payload " + hex(v) + " has bits above index and NOFD set");
      VU_CHECK(check_index(req, v & kVringIndexMask, limits));
      const bool nofd = (v & kVringNoFd) != 0;
      if (nfds != (nofd ? 0U : 1U))
        return bad(req, std::to_string(nfds) + " file descriptors attached with NOFD " +
                            (nofd ? "set (expected 0)" : "clear (expected 1)"));
      return Body{
          VringFd{static_cast<uint32_t>(v & kVringIndexMask), nofd ? Fd() : std::move(fds[0])}};
    }
    case Request::GetConfig:
    case Request::SetConfig: {
      if (nfds != 0)
        return bad(req, std::to_string(nfds) + " file descriptors attached, expected 0");
      VU_TRY(c, parse_config(req, p));
      return Body{std::move(c)};
    }
    case Request::GetInflightFd: {
      VU_CHECK(expect(req, p, sizeof(InflightWire), nfds, 0));
      const auto w = load<InflightWire>(p);
      VU_CHECK(check_inflight(req, w, limits, false));
      return Body{Inflight{w, Fd()}};
    }
    case Request::SetInflightFd: {
      VU_CHECK(expect(req, p, sizeof(InflightWire), nfds, 1));
      const auto w = load<InflightWire>(p);
      VU_CHECK(check_inflight(req, w, limits, true));
      return Body{Inflight{w, std::move(fds[0])}};
    }
    case Request::AddMemReg:
    case Request::RemMemReg: {
      const bool add = static_cast<Request>(req) == Request::AddMemReg;
      if (p.size() != sizeof(SingleMemRegionWire))
        return bad(req, "payload size " + std::to_string(p.size()) + ", expected 40");
      // REM_MEM_REG SHOULD carry no fd, but the spec lets a back-end accept (and close) one.
      if (add ? nfds != 1 : nfds > 1)
        return bad(req, std::to_string(nfds) + " file descriptors attached, expected " +
                            (add ? "1" : "0 or 1"));
      const auto w = load<SingleMemRegionWire>(p);
      VU_CHECK(check_region(req, "region", w.region));
      Fd fd;
      if (add) fd = std::move(fds[0]);
      return Body{SingleRegion{w.region, std::move(fd)}};
    }
    default:
      break;
  }
  if (req >= 1 && req < std::size(kNames))
    return bad(req, "request not supported by this back-end");
  return bad(req, "unknown request");
}

Result<Body> parse_reply(uint32_t req, std::span<const uint8_t> p, std::vector<Fd>& fds,
                         const Limits& limits) {
  const size_t nfds = fds.size();
  switch (static_cast<Request>(req)) {
    case Request::GetVringBase: {
      VU_CHECK(expect(req, p, sizeof(VringState), nfds, 0));
      const auto s = load<VringState>(p);
      VU_CHECK(check_index(req, s.index, limits));
      return Body{s};
    }
    case Request::GetConfig: {
      if (nfds != 0)
        return bad(req, std::to_string(nfds) + " file descriptors attached, expected 0");
      VU_TRY(c, parse_config(req, p));
      return Body{std::move(c)};
    }
    case Request::GetInflightFd: {
      if (p.size() != sizeof(InflightWire))
        return bad(req, "payload size " + std::to_string(p.size()) + ", expected 24");
      const auto w = load<InflightWire>(p);
      // mmap_size 0 means "no inflight area" and comes without an fd.
      const size_t want = w.mmap_size == 0 ? 0 : 1;
      if (nfds != want)
        return bad(req, std::to_string(nfds) + " file descriptors attached, expected " +
                            std::to_string(want));
      if (want == 0) return Body{Inflight{w, Fd()}};
      VU_CHECK(check_inflight(req, w, limits, true));
      return Body{Inflight{w, std::move(fds[0])}};
    }
    default:
      break;
  }
  // Every other reply (GET_FEATURES & co, and REPLY_ACK for any request) is a u64.
  if (req == 0 || req >= std::size(kNames)) return bad(req, "reply to an unknown request");
  VU_CHECK(expect(req, p, 8, nfds, 0));
  return Body{U64{load<uint64_t>(p)}};
}

void put(std::vector<uint8_t>& out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}

}  // namespace

std::string request_name(uint32_t request) {
  if (request >= 1 && request < std::size(kNames)) return kNames[request];
  return "request " + std::to_string(request);
}

Result<Message> parse(const Header& header, std::span<const uint8_t> payload, std::vector<Fd> fds,
                      Role role, const Limits& limits) {
  const uint32_t req = header.request;
  if ((header.flags & kVersionMask) != kVersion)
    return bad(req, "flags " + hex(header.flags) + ": version " +
                        std::to_string(header.flags & kVersionMask) + " is not 1");
  if ((header.flags & ~kKnownFlags) != 0)
    return bad(req, "flags " + hex(header.flags) + " has unknown bits");
  if (header.size != payload.size())
    return bad(req, "header size " + std::to_string(header.size) + " but " +
                        std::to_string(payload.size()) + " payload bytes");
  if (header.size > kMaxPayload)
    return bad(req, "payload size " + std::to_string(header.size) + " above " +
                        std::to_string(kMaxPayload));
  if (fds.size() > kMaxFds)
    return bad(req, std::to_string(fds.size()) + " file descriptors attached, at most 8");
  const bool reply = (header.flags & kFlagReply) != 0;
  Result<Body> body;
  if (role == Role::Backend) {
    if (reply) return bad(req, "REPLY flag set on a request");
    body = parse_request(req, payload, fds, limits);
  } else {
    if (!reply) return bad(req, "REPLY flag missing on a reply");
    if ((header.flags & kFlagNeedReply) != 0) return bad(req, "NEED_REPLY flag set on a reply");
    body = parse_reply(req, payload, fds, limits);
  }
  if (!body) return std::unexpected(std::move(body.error()));
  return Message{static_cast<Request>(req), header.flags, std::move(*body)};
}

Result<Message> parse(std::span<const uint8_t> bytes, std::vector<Fd> fds, Role role,
                      const Limits& limits) {
  if (bytes.size() < sizeof(Header))
    return fail("vhost-user: message of " + std::to_string(bytes.size()) +
                    " bytes is shorter than the 12-byte header",
                EPROTO);
  const auto h = load<Header>(bytes);
  return parse(h, bytes.subspan(sizeof(Header)), std::move(fds), role, limits);
}

Result<Encoded> encode(const Message& msg) {
  const auto req = static_cast<uint32_t>(msg.request);
  Encoded e;
  e.bytes.resize(sizeof(Header));
  std::vector<uint8_t>& out = e.bytes;
  const bool ok = std::visit(
      [&](const auto& b) -> bool {
        using T = std::decay_t<decltype(b)>;
        if constexpr (std::is_same_v<T, Empty>) {
          return true;
        } else if constexpr (std::is_same_v<T, U64> || std::is_same_v<T, VringState> ||
                             std::is_same_v<T, VringAddr>) {
          put(out, &b, sizeof b);
          return true;
        } else if constexpr (std::is_same_v<T, MemTable>) {
          if (b.regions.empty() || b.regions.size() > kMaxMemTableRegions) return false;
          const uint32_t hdr[2] = {static_cast<uint32_t>(b.regions.size()), 0};
          put(out, hdr, sizeof hdr);
          put(out, b.regions.data(), b.regions.size() * sizeof(MemRegion));
          for (const Fd& f : b.fds) e.fds.push_back(f.get());
          return true;
        } else if constexpr (std::is_same_v<T, SingleRegion>) {
          const SingleMemRegionWire w{0, b.region};
          put(out, &w, sizeof w);
          if (b.fd) e.fds.push_back(b.fd.get());
          return true;
        } else if constexpr (std::is_same_v<T, VringFd>) {
          const uint64_t v = (b.index & kVringIndexMask) | (b.fd ? 0 : kVringNoFd);
          put(out, &v, sizeof v);
          if (b.fd) e.fds.push_back(b.fd.get());
          return true;
        } else if constexpr (std::is_same_v<T, Config>) {
          if (b.data.size() > kMaxConfigSize) return false;
          const ConfigWireHeader h{b.offset, static_cast<uint32_t>(b.data.size()), b.flags};
          put(out, &h, sizeof h);
          if (!b.data.empty()) put(out, b.data.data(), b.data.size());
          return true;
        } else if constexpr (std::is_same_v<T, Inflight>) {
          put(out, &b.info, sizeof b.info);
          if (b.fd) e.fds.push_back(b.fd.get());
          return true;
        } else if constexpr (std::is_same_v<T, LogBase>) {
          put(out, &b.area, sizeof b.area);
          if (b.fd) e.fds.push_back(b.fd.get());
          return true;
        } else {
          static_assert(std::is_same_v<T, LogFd>);
          if (b.fd) e.fds.push_back(b.fd.get());
          return true;
        }
      },
      msg.body);
  if (!ok || e.fds.size() > kMaxFds)
    return bad(req, "cannot encode: body does not fit the wire format");
  const Header h{req, msg.flags, static_cast<uint32_t>(out.size() - sizeof(Header))};
  std::memcpy(out.data(), &h, sizeof h);
  return e;
}

Message make_request(Request r, Body body, bool need_reply) {
  return Message{r, kVersion | (need_reply ? kFlagNeedReply : 0U), std::move(body)};
}

Message make_reply(Request r, Body body) {
  return Message{r, kVersion | kFlagReply, std::move(body)};
}

Result<std::pair<Connection, Connection>> Connection::pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return fail_errno("vhost-user: socketpair");
  return std::pair<Connection, Connection>(Connection(Fd(sv[0])), Connection(Fd(sv[1])));
}

Status Connection::send_raw(std::span<const uint8_t> bytes, std::span<const int> fds) {
  if (fds.size() > kMaxFds) return fail("vhost-user send: more than 8 file descriptors", EINVAL);
  alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))] = {};
  size_t off = 0;
  bool fds_sent = fds.empty();
  while (off < bytes.size() || !fds_sent) {
    iovec iov{const_cast<uint8_t*>(bytes.data() + off), bytes.size() - off};  // NOLINT
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (!fds_sent) {
      mh.msg_control = control;
      mh.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
      std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
    }
    const ssize_t n = ::sendmsg(fd_.get(), &mh, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail_errno("vhost-user sendmsg");
    }
    fds_sent = true;
    off += static_cast<size_t>(n);
  }
  return {};
}

Status Connection::send(const Message& msg) {
  VU_TRY(e, encode(msg));
  return send_raw(e.bytes, e.fds);
}

Status Connection::read_exact(uint8_t* dst, size_t len, std::vector<Fd>& fds, bool at_boundary,
                              bool& clean_eof, const std::string& what) {
  size_t got = 0;
  while (got < len) {
    alignas(cmsghdr) char control[CMSG_SPACE(kMaxFds * sizeof(int))];
    iovec iov{dst + got, len - got};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_.get(), &mh, MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail_errno("vhost-user recvmsg " + what);
    }
    // Own every fd that arrived before looking at anything else, so each error path closes them.
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int f;
        std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
        fds.emplace_back(f);
      }
    }
    if ((mh.msg_flags & MSG_CTRUNC) != 0)
      return fail(
          "vhost-user recv " + what + ": control message truncated (more than 8 file descriptors?)",
          EPROTO);
    if (fds.size() > kMaxFds)
      return fail("vhost-user recv " + what + ": " + std::to_string(fds.size()) +
                      " file descriptors, at most 8",
                  EPROTO);
    if (n == 0) {
      if (at_boundary && got == 0) {
        clean_eof = true;
        return {};
      }
      return fail("vhost-user recv " + what + ": peer closed the connection inside a message (" +
                      std::to_string(got) + " of " + std::to_string(len) + " bytes)",
                  EPROTO);
    }
    got += static_cast<size_t>(n);
  }
  return {};
}

Result<std::optional<RawMessage>> Connection::recv() {
  RawMessage m;
  bool eof = false;
  uint8_t hb[sizeof(Header)];
  VU_CHECK(read_exact(hb, sizeof hb, m.fds, true, eof, "header"));
  if (eof) return std::optional<RawMessage>();
  std::memcpy(&m.header, hb, sizeof hb);
  if (m.header.size > kMaxPayload)
    return bad(m.header.request, "header size " + std::to_string(m.header.size) + " above the " +
                                     std::to_string(kMaxPayload) + "-byte limit");
  m.payload.resize(m.header.size);
  if (m.header.size != 0) {
    bool unused = false;
    VU_CHECK(read_exact(m.payload.data(), m.payload.size(), m.fds, false, unused,
                        request_name(m.header.request) + " payload"));
  }
  return std::optional<RawMessage>(std::move(m));
}

Result<std::optional<Message>> Connection::receive(Role role, const Limits& limits) {
  VU_TRY(raw, recv());
  if (!raw) return std::optional<Message>();
  VU_TRY(msg, parse(std::move(*raw), role, limits));
  return std::optional<Message>(std::move(msg));
}

}  // namespace iovirt::virtio::vhost_user
