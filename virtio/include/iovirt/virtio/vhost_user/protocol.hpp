// vhost-user wire protocol (QEMU docs/interop/vhost-user.rst): message header, request codes,
// protocol feature bits, payload structs in the C layout the peers put on the socket, a parser that
// validates everything the peer controls, an encoder for both directions, and framing over an
// AF_UNIX SOCK_STREAM socket with SCM_RIGHTS.
//
// The peer is hostile: a back-end must survive any front-end and vice versa. parse() checks the
// version bits, the payload size per request, every count and range, and the number of file
// descriptors; any error is one line naming the message and the field. Received fds are owned
// by Fd from the moment recvmsg() returns, so every error path closes them.
//
// Not here yet (issue 4): the back-end-initiated channel (BACKEND_REQ), IOTLB, postcopy, the
// vhost-user front-end device and the iovirt-vhost daemon.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"

namespace iovirt::virtio::vhost_user {

// ---- header ----
struct Header {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // payload bytes following the header
};
static_assert(sizeof(Header) == 12);

inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagReply = 0x4;
inline constexpr uint32_t kFlagNeedReply = 0x8;
inline constexpr uint32_t kKnownFlags = kVersionMask | kFlagReply | kFlagNeedReply;

// The largest payload any supported message has is GET/SET_CONFIG (12 + 256). Anything above this
// is refused before a byte of payload is read.
inline constexpr uint32_t kMaxPayload = 4096;
// At most this many fds travel with one message (SET_MEM_TABLE with 8 regions).
inline constexpr size_t kMaxFds = 8;
inline constexpr uint32_t kMaxMemTableRegions = 8;
inline constexpr uint32_t kMaxConfigSize = 256;
inline constexpr uint32_t kMaxQueueSize = 32768;

// ---- request codes (front-end -> back-end) ----
enum class Request : uint32_t {
  GetFeatures = 1,
  SetFeatures = 2,
  SetOwner = 3,
  ResetOwner = 4,
  SetMemTable = 5,
  SetLogBase = 6,
  SetLogFd = 7,
  SetVringNum = 8,
  SetVringAddr = 9,
  SetVringBase = 10,
  GetVringBase = 11,
  SetVringKick = 12,
  SetVringCall = 13,
  SetVringErr = 14,
  GetProtocolFeatures = 15,
  SetProtocolFeatures = 16,
  GetQueueNum = 17,
  SetVringEnable = 18,
  SendRarp = 19,
  NetSetMtu = 20,
  SetBackendReqFd = 21,
  IotlbMsg = 22,
  SetVringEndian = 23,
  GetConfig = 24,
  SetConfig = 25,
  CreateCryptoSession = 26,
  CloseCryptoSession = 27,
  PostcopyAdvise = 28,
  PostcopyListen = 29,
  PostcopyEnd = 30,
  GetInflightFd = 31,
  SetInflightFd = 32,
  GpuSetSocket = 33,
  ResetDevice = 34,
  VringKick = 35,
  GetMaxMemSlots = 36,
  AddMemReg = 37,
  RemMemReg = 38,
  SetStatus = 39,
  GetStatus = 40,
};

// "SET_MEM_TABLE", or "request 99" for codes outside the table.
std::string request_name(uint32_t request);

// ---- protocol feature bits (GET/SET_PROTOCOL_FEATURES) ----
namespace protocol_feature {
inline constexpr unsigned kMq = 0;
inline constexpr unsigned kLogShmfd = 1;
inline constexpr unsigned kRarp = 2;
inline constexpr unsigned kReplyAck = 3;
inline constexpr unsigned kMtu = 4;
inline constexpr unsigned kBackendReq = 5;
inline constexpr unsigned kCrossEndian = 6;
inline constexpr unsigned kCryptoSession = 7;
inline constexpr unsigned kPagefault = 8;
inline constexpr unsigned kConfig = 9;
inline constexpr unsigned kBackendSendFd = 10;
inline constexpr unsigned kHostNotifier = 11;
inline constexpr unsigned kInflightShmfd = 12;
inline constexpr unsigned kResetDevice = 13;
inline constexpr unsigned kInbandNotifications = 14;
inline constexpr unsigned kConfigureMemSlots = 15;
inline constexpr unsigned kStatus = 16;
}  // namespace protocol_feature

// The virtio feature bit a back-end offers in GET_FEATURES when it speaks the protocol features.
inline constexpr unsigned kFeatureProtocolFeatures = 30;

// ---- payloads (little-endian host, C layout) ----
struct VringState {
  uint32_t index;
  uint32_t num;
};
static_assert(sizeof(VringState) == 8);

inline constexpr uint32_t kVringFlagLog = 0x1;  // VHOST_VRING_F_LOG in VringAddr::flags

struct VringAddr {
  uint32_t index;
  uint32_t flags;
  uint64_t desc_user_addr;  // front-end virtual addresses, translated via the memory table
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40);
static_assert(offsetof(VringAddr, log_guest_addr) == 32);

struct MemRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};
static_assert(sizeof(MemRegion) == 32);

struct MemTableWire {
  uint32_t nregions;
  uint32_t padding;
  MemRegion regions[kMaxMemTableRegions];
};
static_assert(sizeof(MemTableWire) == 8 + 8 * 32);
inline constexpr uint32_t kMemTableHeaderSize = 8;

struct SingleMemRegionWire {
  uint64_t padding;
  MemRegion region;
};
static_assert(sizeof(SingleMemRegionWire) == 40);

struct ConfigWireHeader {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;
};
static_assert(sizeof(ConfigWireHeader) == 12);

struct InflightWire {
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
  uint32_t padding;  // the C struct is padded to 8 bytes; peers send all 24
};
static_assert(sizeof(InflightWire) == 24);

struct LogWire {
  uint64_t mmap_size;
  uint64_t mmap_offset;
};
static_assert(sizeof(LogWire) == 16);

// SET_VRING_KICK/CALL/ERR payload: bits 0..7 queue index, bit 8 "no fd" (polling / none).
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFd = 0x100;

// ---- parsed messages ----
struct Empty {};  // requests without payload
struct U64 {
  uint64_t value;
};  // SET_FEATURES, SET_STATUS, ..., and u64 replies / acks
struct MemTable {
  std::vector<MemRegion> regions;
  std::vector<Fd> fds;  // fds[i] backs regions[i]
};
struct SingleRegion {  // ADD_MEM_REG (fd valid), REM_MEM_REG (fd closed if a peer sent one)
  MemRegion region;
  Fd fd;
};
struct VringFd {  // SET_VRING_KICK/CALL/ERR
  uint32_t index;
  Fd fd;  // invalid when the NOFD bit was set
};
struct Config {
  uint32_t offset;
  uint32_t flags;
  std::vector<uint8_t> data;  // size bytes (GET_CONFIG request: contents ignored)
};
struct Inflight {
  InflightWire info;
  Fd fd;  // SET_INFLIGHT_FD request and GET_INFLIGHT_FD reply; invalid otherwise
};
struct LogBase {
  LogWire area;
  Fd fd;
};
struct LogFd {
  Fd fd;
};

using Body = std::variant<Empty, U64, VringState, VringAddr, MemTable, SingleRegion, VringFd,
                          Config, Inflight, LogBase, LogFd>;

struct Message {
  Request request = Request::GetFeatures;
  uint32_t flags = kVersion;
  Body body;

  [[nodiscard]] bool is_reply() const { return (flags & kFlagReply) != 0; }
  [[nodiscard]] bool need_reply() const { return (flags & kFlagNeedReply) != 0; }
};

// Which side is parsing: a Backend parses front-end requests, a Frontend parses back-end replies.
enum class Role { Backend, Frontend };

// What the parsing side allows; values above these are refused.
struct Limits {
  uint32_t max_queues = 8;     // vring index < max_queues
  uint32_t max_mem_slots = 8;  // regions in SET_MEM_TABLE (<= 8 on the wire)
};

// One message as read off the socket, fds already owned.
struct RawMessage {
  Header header{};
  std::vector<uint8_t> payload;
  std::vector<Fd> fds;
};

// Validates and decodes. On error every fd in `fds` is closed (they are owned by the argument).
Result<Message> parse(const Header& header, std::span<const uint8_t> payload, std::vector<Fd> fds,
                      Role role, const Limits& limits);
// The same from header bytes followed by payload bytes (fuzzers, tests).
Result<Message> parse(std::span<const uint8_t> bytes, std::vector<Fd> fds, Role role,
                      const Limits& limits);
inline Result<Message> parse(RawMessage raw, Role role, const Limits& limits) {
  return parse(raw.header, raw.payload, std::move(raw.fds), role, limits);
}

// Encoded form of a message: header + payload bytes, plus the fds to pass (borrowed from the
// Message, which must outlive the send).
struct Encoded {
  std::vector<uint8_t> bytes;
  std::vector<int> fds;
};
// Encodes any Message (request or reply). Fails for a body that does not fit its request
// (e.g. more than 8 regions, config above 256 bytes).
Result<Encoded> encode(const Message& msg);

// Builders for the common cases.
Message make_request(Request r, Body body = Empty{}, bool need_reply = false);
Message make_reply(Request r, Body body);
inline Message make_ack(Request r, uint64_t status) {
  return make_reply(r, U64{status});
}

// A blocking AF_UNIX SOCK_STREAM connection speaking vhost-user framing.
class Connection {
 public:
  explicit Connection(Fd fd) : fd_(std::move(fd)) {}
  // A connected socketpair, for tests and in-process peers.
  static Result<std::pair<Connection, Connection>> pair();

  [[nodiscard]] int fd() const { return fd_.get(); }

  // Sends header+payload with the fds (<= 8) in one SCM_RIGHTS control message.
  Status send_raw(std::span<const uint8_t> bytes, std::span<const int> fds);
  Status send(const Message& msg);
  // Reads one message: the header, then exactly header.size payload bytes (refused above
  // kMaxPayload). nullopt when the peer closed cleanly between messages; EOF inside a message,
  // a truncated control message (MSG_CTRUNC) or more than 8 fds is an error, and every fd that
  // did arrive is closed.
  Result<std::optional<RawMessage>> recv();
  // recv() + parse(); nullopt on clean EOF. After any error the stream position is unknown (a
  // refused message may have been read in part): the caller drops the connection.
  Result<std::optional<Message>> receive(Role role, const Limits& limits);

 private:
  // `what` names the part being read in error lines ("header", "SET_MEM_TABLE payload").
  Status read_exact(uint8_t* dst, size_t len, std::vector<Fd>& fds, bool at_boundary,
                    bool& clean_eof, const std::string& what);
  Fd fd_;
};

}  // namespace iovirt::virtio::vhost_user
