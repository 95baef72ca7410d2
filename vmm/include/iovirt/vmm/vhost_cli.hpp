// Command line of the iovirt-vhost daemon (vmm/vhost_main.cpp): the vhost-user back-end for the
// same devices iovirt runs in process. Kept apart from main() so the parser is unit-tested.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt {

enum class VhostCommand { Help, Version, Blk, Net };

struct VhostBlkOptions {
  std::string socket;
  std::string file;
  bool direct = false;
  bool readonly = false;
  uint16_t queues = 1;
  uint16_t queue_size = 1024;  // the largest ring a front-end may choose (SET_VRING_NUM)
  std::string serial;
  uint32_t poll_us = 0;  // busy-poll window per queue worker, 0: event-driven (BlkConfig::poll_us)
  std::string metrics;  // HOST:PORT, empty: no metrics endpoint
  std::string io = "auto";  // BlkConfig::io: auto, io_uring, sync (checked by the parser)
};

// Where `iovirt-vhost net` sends the frames (--backend).
enum class NetBackendKind { Loopback, Sink, Source, Tap, Dpdk };

struct VhostNetOptions {
  std::string socket;
  NetBackendKind backend = NetBackendKind::Loopback;
  std::string tap;         // --backend tap=NAME
  std::string dpdk;        // --backend dpdk=SPEC (dpdk_port.hpp)
  uint32_t frame_len = 60;  // --backend source=LEN
  uint16_t queues = 1;     // queue pairs
  uint16_t queue_size = 1024;
  std::optional<std::array<uint8_t, 6>> mac;
  uint32_t poll_us = 0;
  uint32_t poll_gap_ns = 0;  // --poll-gap-ns (NetConfig::poll_gap_ns)
  std::string metrics;
};

struct VhostArgs {
  VhostCommand command = VhostCommand::Help;
  VhostBlkOptions blk;
  VhostNetOptions net;
};

// args without argv[0]. Errors are one line naming the option (exit status 2 in main()).
Result<VhostArgs> parse_vhost_args(const std::vector<std::string>& args);
std::string vhost_usage();

}  // namespace iovirt
