// iovirt-vhost command line; see vhost_cli.hpp.
#include "iovirt/vmm/vhost_cli.hpp"

#include <bit>

#include "iovirt/vmm/config.hpp"

namespace iovirt {

std::string vhost_usage() {
  return "usage: iovirt-vhost blk --socket PATH --file FILE [--direct] [--readonly]\n"
         "                        [--queues N] [--queue-size N] [--serial S]\n"
         "                        [--poll-us N] [--metrics HOST:PORT]\n"
         "       iovirt-vhost --help | --version\n"
         "\n"
         "Serves a virtio device to a vhost-user front-end (QEMU vhost-user-blk-pci, Cloud\n"
         "Hypervisor, iovirt) on an AF_UNIX socket, one front-end at a time.\n"
         "\n"
         "blk: virtio-blk over FILE (regular file or block device), io_uring, one thread per queue\n"
         "  --socket PATH        listen here (a stale socket is replaced, a live one refused)\n"
         "  --file FILE          the disk image\n"
         "  --direct             O_DIRECT: bypass the host page cache\n"
         "  --readonly           open FILE read-only and offer VIRTIO_BLK_F_RO\n"
         "  --queues N           request queues, 1..64 (default 1)\n"
         "  --queue-size N       largest ring the front-end may use, power of 2, 2..1024\n"
         "                       (default 1024)\n"
         "  --serial S           GET_ID string, at most 20 bytes (default: from the path)\n"
         "  --poll-us N          after each batch, busy-poll the ring for up to N microseconds\n"
         "                       (restarted by new work) before sleeping on the kick; costs a\n"
         "                       core per busy queue, saves the wake-up; 0..1000000 (default 0)\n"
         "  --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics\n"
         "\n"
         "Log level: IOVIRT_LOG=debug|info|warn|error. SIGINT/SIGTERM stop the daemon.\n"
         "exit status: 0 stopped by a signal, 1 error, 2 usage error\n";
}

Result<VhostArgs> parse_vhost_args(const std::vector<std::string>& args) {
  VhostArgs out;
  if (args.empty()) return fail("no command given (try: iovirt-vhost blk --socket PATH --file FILE)");
  const std::string& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    out.command = VhostCommand::Help;
    return out;
  }
  if (cmd == "--version" || cmd == "version") {
    out.command = VhostCommand::Version;
    return out;
  }
  if (cmd == "net")
    return fail("net: not implemented yet (only blk is available in this build)");
  if (cmd != "blk") return fail("unknown command '" + cmd + "' (see iovirt-vhost --help)");
  out.command = VhostCommand::Blk;
  VhostBlkOptions& b = out.blk;
  bool have_socket = false;
  bool have_file = false;
  for (size_t i = 1; i < args.size(); ++i) {
    std::string opt = args[i];
    std::string val;
    bool inline_val = false;
    if (auto eq = opt.find('='); opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt.resize(eq);
      inline_val = true;
    }
    if (opt == "--help" || opt == "-h") {
      out.command = VhostCommand::Help;
      return out;
    }
    if (opt == "--direct" || opt == "--readonly") {
      if (inline_val) return fail(opt + " takes no value");
      (opt == "--direct" ? b.direct : b.readonly) = true;
      continue;
    }
    static const char* kWithValue[] = {"--socket", "--file",   "--queues",
                                       "--queue-size", "--serial", "--metrics",
                                       "--poll-us"};
    bool known = false;
    for (const char* k : kWithValue) known = known || opt == k;
    if (!known) return fail("unknown option '" + opt + "' (see iovirt-vhost --help)");
    if (!inline_val) {
      if (i + 1 >= args.size()) return fail(opt + " needs a value");
      val = args[++i];
    }
    if (opt == "--socket") {
      if (val.empty()) return fail("--socket: empty path");
      b.socket = val;
      have_socket = true;
    } else if (opt == "--file") {
      if (val.empty()) return fail("--file: empty path");
      b.file = val;
      have_file = true;
    } else if (opt == "--queues") {
      auto n = parse_u32(opt, val);
      if (!n) return std::unexpected(n.error());
      if (*n == 0 || *n > 64) return fail("--queues: " + val + " is not in 1..64");
      b.queues = static_cast<uint16_t>(*n);
    } else if (opt == "--queue-size") {
      auto n = parse_u32(opt, val);
      if (!n) return std::unexpected(n.error());
      if (*n < 2 || *n > 1024 || !std::has_single_bit(*n))
        return fail("--queue-size: " + val + " is not a power of 2 in 2..1024");
      b.queue_size = static_cast<uint16_t>(*n);
    } else if (opt == "--serial") {
      if (val.size() > 20) return fail("--serial: '" + val + "' is longer than 20 bytes");
      b.serial = val;
    } else if (opt == "--poll-us") {
      auto n = parse_u32(opt, val);
      if (!n) return std::unexpected(n.error());
      if (*n > 1'000'000) return fail("--poll-us: " + val + " is not in 0..1000000");
      b.poll_us = *n;
    } else if (opt == "--metrics") {
      if (auto st = check_host_port(val); !st) return std::unexpected(st.error());
      b.metrics = val;
    }
  }
  if (!have_socket) return fail("blk: --socket PATH is required");
  if (!have_file) return fail("blk: --file FILE is required");
  return out;
}

}  // namespace iovirt
