// vhost-user back-end transport and its socket server; see vhost_user/backend.hpp.
#include "iovirt/virtio/vhost_user/backend.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "iovirt/core/hex.hpp"
#include "iovirt/core/log.hpp"
#include "iovirt/virtio/ring.hpp"

namespace iovirt::virtio::vhost_user {

namespace {

constexpr uint64_t kProtocolFeaturesBit = uint64_t{1} << kFeatureProtocolFeatures;

std::unexpected<Error> bad(Request r, const std::string& what) {
  std::string s = "vhost-user ";
  s += request_name(static_cast<uint32_t>(r));
  s += ": ";
  s += what;
  return fail(std::move(s), EPROTO);
}

// A peer's fd used as kick/call/err must be an eventfd: anything else (a regular file always
// polls readable, a pipe can block a read) would turn the device thread into a busy loop or a
// hang. Made non-blocking, which the device contract expects of kick fds; eventfd flags are per
// open file description, so the front-end's copy becomes non-blocking too, which is harmless for
// a descriptor that is only written (or handed to KVM).
Status check_eventfd(Request r, uint32_t index, int fd) {
  char link[64] = {};
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(proc.c_str(), link, sizeof link - 1);
  if (n < 0 || std::strcmp(link, "anon_inode:[eventfd]") != 0)
    return bad(r, "vring " + std::to_string(index) + ": the file descriptor is not an eventfd (" +
                      (n < 0 ? std::string("unreadable") : std::string(link)) + ")");
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return bad(r, "vring " + std::to_string(index) + ": fcntl O_NONBLOCK: " + std::strerror(errno));
  return {};
}

void signal_fd(int fd) {
  const uint64_t one = 1;
  // EAGAIN: the counter is saturated, a notification is pending anyway.
  while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

}  // namespace

uint64_t backend_protocol_features() {
  using namespace protocol_feature;  // NOLINT: bit names
  return (uint64_t{1} << kMq) | (uint64_t{1} << kReplyAck) | (uint64_t{1} << kConfig) |
         (uint64_t{1} << kStatus) | (uint64_t{1} << kInflightShmfd);
}

struct VhostUserBackend::InflightArea {
  uint8_t* base = nullptr;
  size_t size = 0;
  uint16_t num_queues = 0;
  size_t stride = 0;
  InflightArea() = default;
  InflightArea(const InflightArea&) = delete;
  InflightArea& operator=(const InflightArea&) = delete;
  ~InflightArea() {
    if (base != nullptr) ::munmap(base, size);
  }
};

Result<std::unique_ptr<VhostUserBackend>> VhostUserBackend::create(VirtioDevice& dev,
                                                                   MetricsRegistry& metrics,
                                                                   BackendOptions opt) {
  const std::string who = "vhost-user " + std::string(dev.name());
  // SET_VRING_KICK & co carry the index in 8 bits.
  if (dev.num_queues() == 0 || dev.num_queues() > kVringIndexMask + 1)
    return fail(who + ": " + std::to_string(dev.num_queues()) + " queues (1..256 supported)",
                EINVAL);
  if ((dev.features() & feature_bit(VIRTIO_F_VERSION_1)) == 0)
    return fail(who + ": the device does not offer VIRTIO_F_VERSION_1", EINVAL);
  if (opt.max_mem_slots == 0 || opt.max_mem_slots > kMaxMemTableRegions)
    return fail(who + ": max_mem_slots " + std::to_string(opt.max_mem_slots) + " not in 1..8",
                EINVAL);
  std::vector<Virtqueue> queues;
  queues.reserve(dev.num_queues());
  for (uint16_t i = 0; i < dev.num_queues(); ++i) {
    auto q = Virtqueue::create(dev.queue_max_size());
    if (!q) return std::unexpected(std::move(q.error()).context(who));
    queues.push_back(std::move(*q));
  }
  std::unique_ptr<VhostUserBackend> b(
      new VhostUserBackend(dev, metrics, opt, std::move(queues)));
  return b;
}

VhostUserBackend::VhostUserBackend(VirtioDevice& dev, MetricsRegistry& metrics,
                                   BackendOptions opt, std::vector<Virtqueue> queues)
    : dev_(dev), opt_(opt), queues_(std::move(queues)) {
  offered_ = (dev.features() & ~opt.features_off) | kProtocolFeaturesBit;
  limits_.max_queues = dev.num_queues();
  limits_.max_mem_slots = opt.max_mem_slots;
  const Labels l{{"device", std::string(dev.name())}};
  connections_ = &metrics.counter("iovirt_vhost_user_connections_total",
                                  "vhost-user front-end connections served", l);
  errors_ = &metrics.counter("iovirt_vhost_user_protocol_errors_total",
                             "vhost-user connections closed for a protocol or device error", l);
  rings_.resize(queues_.size());
  calls_.resize(queues_.size());
}

VhostUserBackend::~VhostUserBackend() {
  dev_.reset();
}

// ---------------------------------------------------------------------------------------------
// connection

Status VhostUserBackend::serve(Connection conn) {
  {
    std::lock_guard lock(conn_mu_);
    if (stop_requested_) return {};
    conn_fd_ = conn.fd();
    fail_reason_.clear();
  }
  failed_.store(false);
  connections_->inc();
  const std::string who(dev_.name());
  log_info(who + ": vhost-user front-end connected");
  Status result;
  for (;;) {
    auto r = conn.receive(Role::Backend, limits_);
    if (!r) {
      result = std::unexpected(std::move(r.error()));
      break;
    }
    if (!r->has_value()) break;  // EOF: the peer left, or stop()/device_failed() shut it down
    Message& msg = **r;
    log_debug(who + ": vhost-user " + request_name(static_cast<uint32_t>(msg.request)));
    const bool ack = msg.need_reply() &&
                     (protocol_features_ & (uint64_t{1} << protocol_feature::kReplyAck)) != 0;
    auto reply = handle(msg);
    Status st;
    if (reply) st = apply();
    if (!reply || !st) {
      result = !reply ? std::unexpected(std::move(reply.error()))
                      : std::unexpected(std::move(st.error()));
      // Best effort: a front-end waiting for the ack learns the request failed.
      if (ack) (void)conn.send(make_ack(msg.request, 1));
      break;
    }
    Status sent;
    if (*reply) {
      sent = conn.send(**reply);
    } else if (ack) {
      sent = conn.send(make_ack(msg.request, 0));
    }
    if (!sent) {
      result = std::unexpected(std::move(sent.error()));
      break;
    }
  }
  // Nothing of this connection may outlive it: device threads first, then memory and fds.
  reset_state();
  {
    std::lock_guard lock(conn_mu_);
    conn_fd_ = -1;
    // A device failure shut the socket down: that is the reason, not the EOF or EPIPE it caused.
    if (failed_.load()) result = fail(fail_reason_, EIO);
  }
  if (!result) {
    errors_->inc();
    log_warn(who + ": closing the vhost-user connection: " + result.error().message());
  } else {
    log_info(who + ": vhost-user front-end disconnected");
  }
  return result;
}

void VhostUserBackend::stop() {
  std::lock_guard lock(conn_mu_);
  stop_requested_ = true;
  if (conn_fd_ >= 0) ::shutdown(conn_fd_, SHUT_RDWR);
}

void VhostUserBackend::reset_device_state() {
  stop_device();
  dev_.reset();
  for (Virtqueue& q : queues_) q.reset();
  for (Ring& r : rings_) r = Ring{};
  {
    std::lock_guard lock(call_mu_);
    for (Fd& f : calls_) f.reset();
    err_fds_.clear();
  }
  features_ = 0;
  features_set_ = false;
  protocol_acked_ = false;
  status_ = 0;
}

void VhostUserBackend::reset_state() {
  reset_device_state();
  inflight_.reset();
  protocol_features_ = 0;
  mem_.reset();
  table_.clear();
  dirty_ = false;
}

// ---------------------------------------------------------------------------------------------
// messages

Result<uint64_t> VhostUserBackend::translate(uint64_t uaddr, const char* what) const {
  for (const MemRegion& r : table_) {
    if (uaddr >= r.userspace_addr && uaddr - r.userspace_addr < r.memory_size)
      return r.guest_phys_addr + (uaddr - r.userspace_addr);
  }
  return bad(Request::SetVringAddr,
             std::string(what) + " " + hex(uaddr) + " is not inside any memory table region");
}

Result<std::optional<Message>> VhostUserBackend::handle(Message& msg) {
  using R = std::optional<Message>;
  const Request req = msg.request;
  switch (req) {
    case Request::GetFeatures:
      return R(make_reply(req, U64{offered_}));
    case Request::SetFeatures: {
      const uint64_t v = std::get<U64>(msg.body).value;
      if ((v & ~offered_) != 0)
        return bad(req, "features " + hex(v & ~offered_) + " were not offered");
      const uint64_t f = v & ~kProtocolFeaturesBit;
      // QEMU sends SET_FEATURES once per queue pair, the same bits each time, the later ones
      // while the first pair's rings already run: nothing changes, nothing restarts.
      if (features_set_ && f == features_ && protocol_acked_ == ((v & kProtocolFeaturesBit) != 0))
        return R();
      // Features change what the rings mean (EVENT_IDX...): never under a running device.
      stop_device();
      if (auto st = dev_.negotiate(f); !st) return bad(req, st.error().message());
      features_ = f;
      features_set_ = true;
      protocol_acked_ = (v & kProtocolFeaturesBit) != 0;
      dirty_ = true;
      return R();
    }
    case Request::SetOwner:
      return R();
    case Request::ResetOwner:
    case Request::ResetDevice: {
      // Back to a fresh device; the shared memory stays (RESET_DEVICE keeps the session).
      reset_device_state();
      return R();
    }
    case Request::GetProtocolFeatures:
      return R(make_reply(req, U64{backend_protocol_features()}));
    case Request::SetProtocolFeatures: {
      const uint64_t v = std::get<U64>(msg.body).value;
      if ((v & ~backend_protocol_features()) != 0)
        return bad(req, "protocol features " + hex(v & ~backend_protocol_features()) +
                            " were not offered");
      protocol_features_ = v;
      return R();
    }
    case Request::GetInflightFd:
      return get_inflight_fd(std::get<Inflight>(msg.body).info);
    case Request::SetInflightFd: {
      auto& in = std::get<Inflight>(msg.body);
      if (auto st = set_inflight_fd(in.info, std::move(in.fd)); !st)
        return std::unexpected(std::move(st.error()));
      return R();
    }
    case Request::GetQueueNum:
      // net counts queue pairs (how QEMU's and DPDK's net front-ends read it), others queues.
      return R(make_reply(req, U64{dev_.device_id() == kDeviceIdNet ? dev_.num_queues() / 2u
                                                                     : dev_.num_queues()}));
    case Request::SetMemTable: {
      auto& t = std::get<MemTable>(msg.body);
      // The device must not touch the old mapping any more, and it is unmapped before the new
      // one is made so a front-end cannot make us hold two copies of guest RAM.
      stop_device();
      mem_.reset();
      table_.clear();
      std::vector<ExternalRegion> ext;
      ext.reserve(t.regions.size());
      for (size_t i = 0; i < t.regions.size(); ++i) {
        const MemRegion& r = t.regions[i];
        ext.push_back(ExternalRegion{r.guest_phys_addr, r.memory_size, std::move(t.fds[i]),
                                     r.mmap_offset});
      }
      auto m = GuestMemory::adopt(std::move(ext));
      if (!m) return bad(req, m.error().message());
      mem_.emplace(std::move(*m));
      table_ = t.regions;
      dirty_ = true;
      return R();
    }
    case Request::SetVringNum: {
      const auto s = std::get<VringState>(msg.body);
      Ring& r = rings_[s.index];
      if (r.started)
        return bad(req, "vring " + std::to_string(s.index) + " is started (stop it with "
                                                             "GET_VRING_BASE first)");
      if (s.num > dev_.queue_max_size())
        return bad(req, "vring " + std::to_string(s.index) + " num " + std::to_string(s.num) +
                            " above the device maximum " + std::to_string(dev_.queue_max_size()));
      r.num = s.num;
      return R();
    }
    case Request::SetVringAddr: {
      const auto a = std::get<VringAddr>(msg.body);
      if ((a.flags & kVringFlagLog) != 0)
        return bad(req, "vring " + std::to_string(a.index) +
                            ": dirty logging requested but LOG_ALL was not offered");
      if (mem_) {  // refuse early; apply() translates again against the table then current
        if (auto g = translate(a.desc_user_addr, "desc_user_addr"); !g) return std::unexpected(g.error());
        if (auto g = translate(a.avail_user_addr, "avail_user_addr"); !g) return std::unexpected(g.error());
        if (auto g = translate(a.used_user_addr, "used_user_addr"); !g) return std::unexpected(g.error());
      }
      rings_[a.index].addr = a;
      if (std::find(serving_.begin(), serving_.end(), a.index) != serving_.end()) dirty_ = true;
      return R();
    }
    case Request::SetVringBase: {
      const auto s = std::get<VringState>(msg.body);
      Ring& r = rings_[s.index];
      if (r.started)
        return bad(req, "vring " + std::to_string(s.index) + " is started (stop it with "
                                                             "GET_VRING_BASE first)");
      // Split: the last avail idx, 16 bits. Packed: avail position | wrap << 15 in the low half;
      // QEMU also puts the used state in the high half (the kernel vhost form), DPDK's
      // virtio-user and iovirt leave it 0, which means "used = avail".
      const auto high = static_cast<uint16_t>(s.num >> 16);
      if (high != 0 && !packed_features())
        return bad(req, "vring " + std::to_string(s.index) + " base " + hex(s.num) +
                            " is above 0xffff for a split ring");
      r.base = static_cast<uint16_t>(s.num);
      r.used.reset();
      if (high != 0) r.used = high;
      return R();
    }
    case Request::GetVringBase: {
      const auto s = std::get<VringState>(msg.body);
      Ring& r = rings_[s.index];
      // Stops the ring (vhost-user.rst): the device is stopped first so the index is final;
      // apply() restarts the other live rings.
      if (std::find(serving_.begin(), serving_.end(), s.index) != serving_.end()) stop_device();
      r.started = false;
      r.kick.reset();
      return R(make_reply(req, VringState{s.index, r.base.value_or(fresh_base())}));
    }
    case Request::SetVringKick: {
      auto& v = std::get<VringFd>(msg.body);
      if (!v.fd)
        return bad(req, "vring " + std::to_string(v.index) +
                            ": polling mode (NOFD) is not supported; pass a kick eventfd");
      if (auto st = check_eventfd(req, v.index, v.fd.get()); !st) return std::unexpected(st.error());
      // The device polls the old fd: stop it before the fd is closed.
      if (std::find(serving_.begin(), serving_.end(), v.index) != serving_.end()) stop_device();
      Ring& r = rings_[v.index];
      r.kick = std::move(v.fd);
      r.started = true;
      return R();
    }
    case Request::SetVringCall: {
      auto& v = std::get<VringFd>(msg.body);
      if (v.fd) {
        if (auto st = check_eventfd(req, v.index, v.fd.get()); !st)
          return std::unexpected(st.error());
      }
      // Device threads write the call fd under the same lock: the old one is closed only when
      // no write to it is in progress.
      std::lock_guard lock(call_mu_);
      calls_[v.index] = std::move(v.fd);
      return R();
    }
    case Request::SetVringErr: {
      auto& v = std::get<VringFd>(msg.body);
      if (v.fd) {
        if (auto st = check_eventfd(req, v.index, v.fd.get()); !st)
          return std::unexpected(st.error());
      }
      std::lock_guard lock(call_mu_);
      rings_[v.index].err = std::move(v.fd);
      err_fds_.clear();
      for (const Ring& r : rings_)
        if (r.err) err_fds_.push_back(r.err.get());
      return R();
    }
    case Request::SetVringEnable: {
      const auto s = std::get<VringState>(msg.body);
      rings_[s.index].enabled = s.num == 1;
      return R();
    }
    case Request::GetConfig: {
      auto& c = std::get<Config>(msg.body);
      // Bytes beyond the device's config space read as zero (the front-end may ask for the
      // whole struct of a newer spec revision).
      std::fill(c.data.begin(), c.data.end(), 0);
      const uint32_t size = dev_.config_size();
      if (c.offset < size) {
        const size_t n = std::min<size_t>(c.data.size(), size - c.offset);
        dev_.read_config(c.offset, std::span<uint8_t>(c.data).first(n));
      }
      return R(make_reply(req, Config{c.offset, c.flags, std::move(c.data)}));
    }
    case Request::SetConfig: {
      const auto& c = std::get<Config>(msg.body);
      if (uint64_t{c.offset} + c.data.size() > dev_.config_size())
        return bad(req, "offset " + std::to_string(c.offset) + " + size " +
                            std::to_string(c.data.size()) + " beyond the device's " +
                            std::to_string(dev_.config_size()) + "-byte configuration space");
      dev_.write_config(c.offset, c.data);
      return R();
    }
    case Request::SetStatus:
      status_ = static_cast<uint8_t>(std::get<U64>(msg.body).value);
      return R();
    case Request::GetStatus:
      return R(make_reply(req, U64{status_}));
    default:
      break;
  }
  return bad(req, "request not supported by this back-end");
}

// ---------------------------------------------------------------------------------------------
// activation

bool VhostUserBackend::packed_features() const {
  return (features_ & feature_bit(VIRTIO_F_RING_PACKED)) != 0;
}

uint16_t VhostUserBackend::fresh_base() const {
  // A packed ring starts at position 0 with both wrap counters 1 (virtio 1.2 2.8.1).
  return (features_ & feature_bit(VIRTIO_F_RING_PACKED)) != 0 ? uint16_t{0x8000} : uint16_t{0};
}

void VhostUserBackend::stop_device() {
  if (serving_.empty()) return;
  dev_.reset();  // no device thread touches a queue when it returns
  for (const uint16_t i : serving_) {
    rings_[i].base = queues_[i].next_avail();
    rings_[i].used = queues_[i].next_used();
  }
  serving_.clear();
}

Status VhostUserBackend::apply() {
  std::vector<uint16_t> want;
  for (uint16_t i = 0; i < rings_.size(); ++i)
    if (live(rings_[i])) want.push_back(i);
  if (want == serving_ && !dirty_) return {};
  stop_device();
  dirty_ = false;
  if (want.empty()) return {};
  const std::string who = "vhost-user " + std::string(dev_.name()) + ": vring ";
  if (!features_set_)
    return fail(who + std::to_string(want.front()) + " started before SET_FEATURES", EPROTO);
  if (!mem_)
    return fail(who + std::to_string(want.front()) + " started before SET_MEM_TABLE", EPROTO);
  ActivateContext ctx;
  ctx.mem = &*mem_;
  ctx.features = features_;
  ctx.irq = this;
  ctx.fail = [this](const std::string& reason) { device_failed(reason); };
  for (const uint16_t i : want) {
    const Ring& r = rings_[i];
    const std::string where = who + std::to_string(i);
    if (r.num == 0) return fail(where + " started without SET_VRING_NUM", EPROTO);
    if (!r.addr) return fail(where + " started without SET_VRING_ADDR", EPROTO);
    IOVIRT_TRY_CTX(desc, translate(r.addr->desc_user_addr, "desc_user_addr"), where);
    IOVIRT_TRY_CTX(avail, translate(r.addr->avail_user_addr, "avail_user_addr"), where);
    IOVIRT_TRY_CTX(used, translate(r.addr->used_user_addr, "used_user_addr"), where);
    Virtqueue& q = queues_[i];
    const bool packed = (features_ & feature_bit(VIRTIO_F_RING_PACKED)) != 0;
    IOVIRT_CHECK_CTX(q.set_format(packed ? RingFormat::Packed : RingFormat::Split), where);
    IOVIRT_CHECK_CTX(q.set_size(r.num), where);
    q.set_desc_area(desc);
    q.set_driver_area(avail);
    q.set_device_area(used);
    q.set_event_idx((features_ & feature_bit(VIRTIO_F_EVENT_IDX)) != 0);
    q.set_in_order((features_ & feature_bit(VIRTIO_F_IN_ORDER)) != 0);
    q.set_indirect((features_ & feature_bit(VIRTIO_F_INDIRECT_DESC)) != 0);
    q.set_ready(true);
    // The whole ring inside one region of the shared memory (virtio 1.2 2.7 sizes).
    IOVIRT_CHECK_CTX(q.validate(*mem_), where);
    // Resume where the front-end says (SET_VRING_BASE, or where this ring stopped). Split: the
    // used index is the one in the ring itself, as the driver last saw it. Packed: the saved
    // used position, else the avail one (see Ring).
    const uint16_t avail_state = r.base.value_or(fresh_base());
    uint16_t used_state = r.used.value_or(avail_state);
    if (!packed) {
      IOVIRT_TRY_CTX(used_idx, mem_->read_obj<uint16_t>(used + 2), where + " used idx");
      used_state = used_idx;
    }
    IOVIRT_CHECK_CTX(q.set_next_avail(avail_state), where + " base");
    IOVIRT_CHECK_CTX(q.set_next_used(used_state), where + " base");
    if (inflight_ && i < inflight_->num_queues) {
      // Resumes from the marks instead: what was in flight is resubmitted first (inflight.hpp).
      // A packed ring also takes both positions from the area (its restore point is nowhere in
      // guest memory).
      std::span<uint8_t> area(inflight_->base + i * inflight_->stride, inflight_->stride);
      if (auto st = q.attach_inflight(*mem_, area); !st) {
        log_warn(where + ": not tracking in-flight requests: " + st.error().message());
      } else if (q.resubmit_pending() > 0) {
        log_info(where + ": resubmitting " + std::to_string(q.resubmit_pending()) +
                 " request(s) that were in flight");
      }
    }
    ctx.queues.push_back(QueueBinding{i, &q, r.kick.get()});
  }
  IOVIRT_CHECK_CTX(dev_.activate(std::move(ctx)), "vhost-user " + std::string(dev_.name()));
  serving_ = std::move(want);
  log_debug("vhost-user " + std::string(dev_.name()) + ": serving " +
            std::to_string(serving_.size()) + " ring(s), features " + hex(features_));
  return {};
}

// GET_INFLIGHT_FD: a fresh, zeroed area for num_queues rings of queue_size (the front-end keeps
// it and hands it to every later back-end with SET_INFLIGHT_FD).
Result<std::optional<Message>> VhostUserBackend::get_inflight_fd(const InflightWire& w) {
  const Request r = Request::GetInflightFd;
  if (w.num_queues > queues_.size())
    return bad(r, "num_queues " + std::to_string(w.num_queues) + " above the device's " +
                      std::to_string(queues_.size()));
  // Split or packed layout by the features the front-end set before asking (QEMU and iovirt send
  // SET_FEATURES first, as the spec's packed layout needs).
  const size_t stride = inflight_queue_bytes(w.queue_size, packed_features());
  const size_t size = stride * w.num_queues;
  Fd fd(::memfd_create("iovirt-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return fail_errno("GET_INFLIGHT_FD: memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) < 0)
    return fail_errno("GET_INFLIGHT_FD: ftruncate");
  // The area must outlive this back-end at its full size: the front-end cannot be shrunk under.
  (void)::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  InflightWire reply = w;
  reply.mmap_size = size;
  reply.mmap_offset = 0;
  reply.padding = 0;
  Message m = make_reply(r, Inflight{reply, std::move(fd)});
  return std::optional<Message>(std::move(m));
}

// SET_INFLIGHT_FD: map the area; the rings attach to it when they (re)start.
Status VhostUserBackend::set_inflight_fd(const InflightWire& w, Fd fd) {
  const Request r = Request::SetInflightFd;
  if (w.num_queues > queues_.size())
    return bad(r, "num_queues " + std::to_string(w.num_queues) + " above the device's " +
                      std::to_string(queues_.size()));
  const size_t stride = inflight_queue_bytes(w.queue_size, packed_features());
  if (w.mmap_size < stride * w.num_queues || w.mmap_size > (64ull << 20))
    return bad(r, "mmap_size " + std::to_string(w.mmap_size) + " does not hold " +
                      std::to_string(w.num_queues) + " queue(s) of " + std::to_string(w.queue_size) +
                      " (or is above 64 MiB)");
  if ((w.mmap_offset & 4095) != 0) return bad(r, "mmap_offset " + hex(w.mmap_offset) + " is not page aligned");
  struct stat st{};
  if (::fstat(fd.get(), &st) < 0) return fail_errno("SET_INFLIGHT_FD: fstat");
  if (static_cast<uint64_t>(st.st_size) < w.mmap_offset + w.mmap_size)
    return bad(r, "the file is " + std::to_string(st.st_size) + " bytes, smaller than offset + size");
  void* p = ::mmap(nullptr, w.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(),
                   static_cast<off_t>(w.mmap_offset));
  if (p == MAP_FAILED) return fail_errno("SET_INFLIGHT_FD: mmap");
  stop_device();  // the serving rings re-attach to the new area
  auto a = std::make_unique<InflightArea>();
  a->base = static_cast<uint8_t*>(p);
  a->size = w.mmap_size;
  a->num_queues = w.num_queues;
  a->stride = stride;
  inflight_ = std::move(a);
  dirty_ = true;
  return {};
}

// ---------------------------------------------------------------------------------------------
// interrupts (device threads)

void VhostUserBackend::notify_queue(uint16_t q) {
  std::lock_guard lock(call_mu_);
  if (q < calls_.size() && calls_[q]) signal_fd(calls_[q].get());
}

void VhostUserBackend::notify_config() {
  // Needs the back-end request channel (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG), not offered.
  log_debug("vhost-user " + std::string(dev_.name()) +
            ": configuration change not forwarded (no back-end request channel)");
}

int VhostUserBackend::queue_irqfd(uint16_t q) {
  std::lock_guard lock(call_mu_);
  return q < calls_.size() && calls_[q] ? calls_[q].get() : -1;
}

void VhostUserBackend::device_failed(const std::string& reason) {
  if (failed_.exchange(true)) return;
  // Logged once, by serve(), when the connection it shuts down ends.
  {
    std::lock_guard lock(call_mu_);
    for (const int fd : err_fds_) signal_fd(fd);
  }
  std::lock_guard lock(conn_mu_);
  fail_reason_ = reason;
  if (conn_fd_ >= 0) ::shutdown(conn_fd_, SHUT_RDWR);
}

// ---------------------------------------------------------------------------------------------
// server

Result<std::unique_ptr<VhostUserServer>> VhostUserServer::listen(const std::string& path,
                                                                 VhostUserBackend& backend) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return fail("vhost-user socket '" + path + "': path must be 1.." +
                    std::to_string(sizeof addr.sun_path - 1) + " bytes",
                EINVAL);
  std::memcpy(addr.sun_path, path.data(), path.size());
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);

  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return fail("vhost-user socket " + path +
                      " exists and is not a socket; remove it or choose another --socket",
                  EEXIST);
    Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe) return fail_errno("vhost-user socket " + path + ": socket");
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), len) == 0)
      return fail("vhost-user socket " + path +
                      " is in use by a running back-end; stop it or choose another --socket",
                  EADDRINUSE);
    if (errno != ECONNREFUSED) return fail_errno("vhost-user socket " + path + ": probe");
    log_info("vhost-user: removing stale socket " + path);
    if (::unlink(path.c_str()) != 0) return fail_errno("vhost-user socket " + path + ": unlink");
  }
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fail_errno("vhost-user socket " + path + ": socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), len) != 0)
    return fail_errno("vhost-user socket " + path + ": bind");
  if (::listen(fd.get(), 1) != 0) return fail_errno("vhost-user socket " + path + ": listen");
  if (::stat(path.c_str(), &st) != 0) return fail_errno("vhost-user socket " + path + ": stat");
  auto stop = EventFd::create();
  if (!stop) return std::unexpected(std::move(stop.error()));
  std::unique_ptr<VhostUserServer> s(new VhostUserServer(path, std::move(fd), std::move(*stop),
                                                         backend, st.st_ino));
  return s;
}

VhostUserServer::VhostUserServer(std::string path, Fd listen_fd, EventFd stop,
                                 VhostUserBackend& backend, uint64_t ino)
    : path_(std::move(path)),
      listen_(std::move(listen_fd)),
      stop_(std::move(stop)),
      backend_(backend),
      ino_(ino) {}

VhostUserServer::~VhostUserServer() {
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_ino == ino_) ::unlink(path_.c_str());
}

Status VhostUserServer::run() {
  while (!stopping_.load()) {
    pollfd fds[2] = {{listen_.get(), POLLIN, 0}, {stop_.fd(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return fail_errno("vhost-user socket " + path_ + ": poll");
    }
    if (fds[1].revents != 0) break;
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int c = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      // EMFILE and friends: keep serving once resources come back, without spinning.
      log_warn("vhost-user socket " + path_ + ": accept: " + std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    // A misbehaving front-end ends its own connection only (serve() logged why).
    (void)backend_.serve(Connection(Fd(c)));
    served_.fetch_add(1);
  }
  return {};
}

void VhostUserServer::stop() {
  stopping_.store(true);
  (void)stop_.write(1);
  backend_.stop();
}

}  // namespace iovirt::virtio::vhost_user
