// iovirt-vhost command line; see vhost_cli.hpp.
#include "iovirt/vmm/vhost_cli.hpp"

#include <bit>
#include <functional>
#include <initializer_list>

#include "iovirt/virtio/blk.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/vmm/config.hpp"

namespace iovirt {

std::string vhost_usage() {
  return "usage: iovirt-vhost blk --socket PATH --file FILE [--direct] [--readonly]\n"
         "                        [--queues N] [--queue-size N] [--serial S] [--io MODE]\n"
         "                        [--poll-us N] [--metrics HOST:PORT]\n"
         "       iovirt-vhost net --socket PATH --backend BACKEND [--queues N] [--queue-size N]\n"
         "                        [--mac MAC] [--poll-us N] [--poll-gap-ns N]\n"
         "                        [--metrics HOST:PORT]\n"
         "       iovirt-vhost --help | --version\n"
         "\n"
         "Serves a virtio device to a vhost-user front-end (QEMU vhost-user-blk-pci or\n"
         "virtio-net-pci with a vhost-user netdev, Cloud Hypervisor, DPDK virtio-user, iovirt) on\n"
         "an AF_UNIX socket, one front-end at a time.\n"
         "\n"
         "blk: virtio-blk over FILE (regular file or block device), one thread per queue\n"
         "  --file FILE          the disk image\n"
         "  --direct             O_DIRECT: bypass the host page cache\n"
         "  --readonly           open FILE read-only and offer VIRTIO_BLK_F_RO\n"
         "  --serial S           GET_ID string, at most 20 bytes (default: from the path)\n"
         "  --io MODE            io_uring: batched, out of order; sync: preadv/pwritev on the\n"
         "                       queue's thread; auto (default): sync for a RAM-backed FILE\n"
         "                       (tmpfs, ramfs, hugetlbfs: io_uring would hand every request to\n"
         "                       a kernel worker thread), io_uring otherwise\n"
         "\n"
         "net: virtio-net, one thread per queue pair; BACKEND is where the frames go:\n"
         "  ring-loopback        every frame sent comes back on the same pair\n"
         "  sink                 frames are copied out of guest memory and dropped, counted\n"
         "  source[=LEN]         LEN-byte UDP frames (60..1514, default 60) fill every rx buffer\n"
         "  tap=NAME             a Linux tap (created if absent), zero-copy, with offloads\n"
         "  dpdk=SPEC            a DPDK ethdev port: SPEC is 'EAL ARGS;port=ID|NAME', e.g.\n"
         "                       'dpdk=-l 1 --vdev=net_tap0,iface=dtap0;port=0'\n"
         "  --mac MAC            the device's MAC (default: random, locally administered)\n"
         "  --poll-gap-ns N      while busy-polling (--poll-us, or a dpdk= port) and after a run\n"
         "                       of 32 frames or more, wait N ns after each round that found\n"
         "                       nothing before looking again, off the rings: a poll reads the\n"
         "                       lines the driver is writing, so polling less lets a fast driver\n"
         "                       go faster (packed rings most), at the cost of up to N ns for a\n"
         "                       frame that arrives in the gap; a frame at a time pays nothing;\n"
         "                       0..1000000 (default 0: look again at once)\n"
         "\n"
         "common:\n"
         "  --socket PATH        listen here (a stale socket is replaced, a live one refused)\n"
         "  --queues N           blk: request queues, net: queue pairs; 1..64 (default 1)\n"
         "  --queue-size N       largest ring the front-end may use, power of 2, 2..1024\n"
         "                       (default 1024)\n"
         "  --poll-us N          after each batch, busy-poll the rings for up to N microseconds\n"
         "                       (restarted by new work) before sleeping on the kick; costs a\n"
         "                       core per busy queue, saves the wake-up; 0..1000000 (default 0)\n"
         "  --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics\n"
         "\n"
         "Log level: IOVIRT_LOG=debug|info|warn|error. SIGINT/SIGTERM stop the daemon.\n"
         "exit status: 0 stopped by a signal, 1 error, 2 usage error\n";
}

namespace {

// Options both devices take.
struct Common {
  std::string* socket;
  uint16_t* queues;
  uint16_t* queue_size;
  uint32_t* poll_us;
  std::string* metrics;
};

using Handler = std::function<Status(const std::string& opt, const std::string& val)>;

// Walks "--opt VALUE", "--opt=VALUE" and "--flag"; the common options are stored in `c`, the
// others given to `on`. Returns true when --help was asked for.
Result<bool> walk(const std::vector<std::string>& args, std::initializer_list<const char*> flags,
                  std::initializer_list<const char*> valued, const Common& c, const Handler& on) {
  static const char* kCommon[] = {"--socket", "--queues", "--queue-size", "--poll-us",
                                  "--metrics"};
  for (size_t i = 1; i < args.size(); ++i) {
    std::string opt = args[i];
    std::string val;
    bool inline_val = false;
    if (auto eq = opt.find('='); opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt.resize(eq);
      inline_val = true;
    }
    if (opt == "--help" || opt == "-h") return true;
    bool flag = false;
    for (const char* f : flags) flag = flag || opt == f;
    if (flag) {
      if (inline_val) return fail(opt + " takes no value");
      if (auto st = on(opt, ""); !st) return std::unexpected(st.error());
      continue;
    }
    bool common = false;
    bool known = false;
    for (const char* k : kCommon) common = common || opt == k;
    for (const char* k : valued) known = known || opt == k;
    if (!common && !known) return fail("unknown option '" + opt + "' (see iovirt-vhost --help)");
    if (!inline_val) {
      if (i + 1 >= args.size()) return fail(opt + " needs a value");
      val = args[++i];
    }
    if (!common) {
      if (auto st = on(opt, val); !st) return std::unexpected(st.error());
    } else if (opt == "--socket") {
      if (val.empty()) return fail("--socket: empty path");
      *c.socket = val;
    } else if (opt == "--queues") {
      auto n = parse_u32(opt, val);
      if (!n) return std::unexpected(n.error());
      if (*n == 0 || *n > 64) return fail("--queues: " + val + " is not in 1..64");
      *c.queues = static_cast<uint16_t>(*n);
    } else if (opt == "--queue-size") {
      auto n = parse_u32(opt, val);
      if (!n) return std::unexpected(n.error());
      if (*n < 2 || *n > 1024 || !std::has_single_bit(*n))
        return fail("--queue-size: " + val + " is not a power of 2 in 2..1024");
      *c.queue_size = static_cast<uint16_t>(*n);
    } else if (opt == "--poll-us") {
      auto n = parse_u32(opt, val);
      if (!n) return std::unexpected(n.error());
      if (*n > 1'000'000) return fail("--poll-us: " + val + " is not in 0..1000000");
      *c.poll_us = *n;
    } else if (opt == "--metrics") {
      if (auto st = check_host_port(val); !st) return std::unexpected(st.error());
      *c.metrics = val;
    }
  }
  return false;
}

Status parse_backend(const std::string& v, VhostNetOptions& n) {
  const auto eq = v.find('=');
  const std::string kind = v.substr(0, eq);
  const std::string arg = eq == std::string::npos ? "" : v.substr(eq + 1);
  const bool has_arg = eq != std::string::npos;
  if (kind == "ring-loopback" || kind == "sink") {
    if (has_arg) return fail("--backend " + kind + " takes no value");
    n.backend = kind == "sink" ? NetBackendKind::Sink : NetBackendKind::Loopback;
  } else if (kind == "source") {
    n.backend = NetBackendKind::Source;
    if (has_arg) {
      auto len = parse_u32("--backend source", arg);
      if (!len) return std::unexpected(len.error());
      if (*len < 60 || *len > 1514)
        return fail("--backend source=" + arg + ": the frame length is not in 60..1514");
      n.frame_len = *len;
    }
  } else if (kind == "tap") {
    if (arg.empty() || arg.size() > 15)
      return fail("--backend tap=NAME: give an interface name of 1..15 characters");
    n.backend = NetBackendKind::Tap;
    n.tap = arg;
  } else if (kind == "dpdk") {
    if (arg.empty()) return fail("--backend dpdk=SPEC: give EAL arguments and a port, e.g. dpdk='--vdev=net_tap0;port=0'");
    n.backend = NetBackendKind::Dpdk;
    n.dpdk = arg;
  } else {
    return fail("--backend: '" + v + "' is not one of ring-loopback, sink, source[=LEN], tap=NAME, dpdk=SPEC");
  }
  return {};
}

}  // namespace

Result<VhostArgs> parse_vhost_args(const std::vector<std::string>& args) {
  VhostArgs out;
  if (args.empty()) {
    return fail("no command given (try: iovirt-vhost blk --socket PATH --file FILE, or net)");
  }
  const std::string& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    out.command = VhostCommand::Help;
    return out;
  }
  if (cmd == "--version" || cmd == "version") {
    out.command = VhostCommand::Version;
    return out;
  }
  if (cmd == "blk") {
    out.command = VhostCommand::Blk;
    VhostBlkOptions& b = out.blk;
    bool have_file = false;
    auto help = walk(
        args, {"--direct", "--readonly"}, {"--file", "--serial", "--io"},
        Common{&b.socket, &b.queues, &b.queue_size, &b.poll_us, &b.metrics},
        [&](const std::string& opt, const std::string& val) -> Status {
          if (opt == "--direct") {
            b.direct = true;
          } else if (opt == "--readonly") {
            b.readonly = true;
          } else if (opt == "--file") {
            if (val.empty()) return fail("--file: empty path");
            b.file = val;
            have_file = true;
          } else if (opt == "--io") {
            if (!virtio::parse_blk_io(val)) {
              return fail("--io: '" + val + "' is not auto, io_uring or sync");
            }
            b.io = val;
          } else if (opt == "--serial") {
            if (val.size() > 20) return fail("--serial: '" + val + "' is longer than 20 bytes");
            b.serial = val;
          }
          return {};
        });
    if (!help) return std::unexpected(help.error());
    if (*help) {
      out.command = VhostCommand::Help;
      return out;
    }
    if (b.socket.empty()) return fail("blk: --socket PATH is required");
    if (!have_file) return fail("blk: --file FILE is required");
    return out;
  }
  if (cmd == "net") {
    out.command = VhostCommand::Net;
    VhostNetOptions& n = out.net;
    bool have_backend = false;
    auto help = walk(args, {}, {"--backend", "--mac", "--poll-gap-ns"},
                     Common{&n.socket, &n.queues, &n.queue_size, &n.poll_us, &n.metrics},
                     [&](const std::string& opt, const std::string& val) -> Status {
                       if (opt == "--backend") {
                         have_backend = true;
                         return parse_backend(val, n);
                       }
                       if (opt == "--poll-gap-ns") {
                         auto g = parse_u32(opt, val);
                         if (!g) return std::unexpected(g.error());
                         if (*g > virtio::NetConfig::kMaxPollGapNs)
                           return fail("--poll-gap-ns: " + val + " is not in 0..1000000");
                         n.poll_gap_ns = *g;
                         return {};
                       }
                       auto mac = parse_mac("--mac ", val);
                       if (!mac) return std::unexpected(mac.error());
                       n.mac = *mac;
                       return {};
                     });
    if (!help) return std::unexpected(help.error());
    if (*help) {
      out.command = VhostCommand::Help;
      return out;
    }
    if (n.socket.empty()) return fail("net: --socket PATH is required");
    if (!have_backend) {
      return fail("net: --backend is required (ring-loopback, sink, source, tap=NAME or dpdk=SPEC)");
    }
    return out;
  }
  return fail("unknown command '" + cmd + "' (see iovirt-vhost --help)");
}

}  // namespace iovirt
