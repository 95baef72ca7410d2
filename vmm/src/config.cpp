#include "iovirt/vmm/config.hpp"

#include <cctype>
#include <charconv>

#include "iovirt/virtio/blk.hpp"

namespace iovirt {

Result<uint64_t> parse_size(const std::string& s) {
  if (s.empty()) return fail("empty size");
  uint64_t v = 0;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec == std::errc::result_out_of_range) return fail("size '" + s + "' is too large");
  if (ec != std::errc() || p == b) return fail("size '" + s + "' is not a number (use e.g. 512M or 2G)");
  unsigned shift = 0;
  if (p != e) {
    switch (std::toupper(static_cast<unsigned char>(*p))) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: return fail("size '" + s + "' has an unknown suffix (use K, M, G or T)");
    }
    ++p;
    if (p != e && (*p == 'i' || *p == 'I')) ++p;
    if (p != e && (*p == 'b' || *p == 'B')) ++p;
    if (p != e) return fail("size '" + s + "' has trailing characters");
  }
  if (shift && v > (UINT64_MAX >> shift)) return fail("size '" + s + "' is too large");
  v <<= shift;
  if (v == 0) return fail("size '" + s + "' is zero");
  return v;
}

std::string usage() {
  return "usage: iovirt run --kernel PATH [--initrd PATH] [--cmdline STR] [--cpus N]\n"
         "                  [--memory SIZE] [--hugepages] [--metrics HOST:PORT]\n"
         "                  [--disk path=FILE[,...]]... [--net tap=NAME[,...]]...\n"
         "                  [--device path=/sys/bus/pci/devices/DDDD:BB:DD.F]...\n"
         "                  [--vf pf=DDDD:BB:DD.F[,mac=..][,vlan=..]]...\n"
         "       iovirt sriov [--json] list | enable PF N | disable PF | bind VF vfio|host\n"
         "                    | config VF [mac=..,vlan=..,qos=..,spoofchk=on|off,trust=on|off,\n"
         "                                 state=auto|enable|disable,min_tx_rate=..,max_tx_rate=..]\n"
         "                    | leases\n"
         "       iovirt --help | --version\n"
         "\n"
         "  --kernel PATH        bzImage to boot (x86-64 Linux boot protocol >= 2.12)\n"
         "  --initrd PATH        initramfs loaded below 4 GiB\n"
         "  --cmdline STR        kernel command line (default: console=ttyS0 reboot=acpi panic=-1)\n"
         "  --cpus N             number of vCPUs (default 1)\n"
         "  --memory SIZE        guest RAM, e.g. 512M, 4G (default 512M)\n"
         "  --hugepages          back guest RAM with 2 MiB hugetlbfs pages\n"
         "  --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics\n"
         "  --disk path=FILE[,readonly=on][,direct=on][,queues=N][,serial=S][,io=MODE]\n"
         "                       virtio-blk; direct=on opens FILE O_DIRECT; io=io_uring|sync|auto\n"
         "                       (auto, the default: sync for a RAM-backed FILE, else io_uring)\n"
         "  --disk vhost-user=SOCKET[,queues=N]\n"
         "                       virtio-blk served by a vhost-user back-end (iovirt-vhost blk,\n"
         "                       qemu-storage-daemon, SPDK); reconnects if it restarts\n"
         "  --net tap=NAME[,mac=52:54:00:xx:xx:xx][,queues=N][,vhost=on]\n"
         "                       virtio-net on tap NAME (queues = queue pairs, multiqueue tap);\n"
         "                       vhost=on hands the rings to the kernel's vhost-net\n"
         "  --net vhost-user=SOCKET[,mac=..][,queues=N]\n"
         "                       virtio-net served by a vhost-user back-end (DPDK net_vhost,\n"
         "                       OVS-DPDK, iovirt-vhost net); reconnects if it restarts\n"
         "  --device path=/sys/bus/pci/devices/DDDD:BB:DD.F\n"
         "                       pass a host PCI function through with VFIO (bind it to vfio-pci\n"
         "                       first; every device of its IOMMU group must be on vfio-pci)\n"
         "  --vf pf=DDDD:BB:DD.F[,mac=..][,vlan=..][,qos=..][,spoofchk=..][,trust=..][,state=..]\n"
         "                       take a VF of that PF from iovirt's pool (leased, configured when\n"
         "                       the PF has a netdev, bound to vfio-pci, passed through; reset and\n"
         "                       returned on exit, reclaimed by the next user if iovirt is killed)\n"
         "  ring options for --disk and --net: packed=on (packed virtqueue), event_idx=off,\n"
         "                       indirect=off, queue_size=N (power of 2, 2..32768, default 256)\n"
         "\n"
         "  iovirt sriov: manage SR-IOV PFs/VFs through sysfs ($IOVIRT_SYSFS_ROOT, default /sys)\n"
         "                       and the VF pool's leases ($IOVIRT_RUN_DIR/sriov, default\n"
         "                       /run/iovirt/sriov); VF as DDDD:BB:DD.F or PF-NETDEV:vfN (config)\n"
         "\n"
         "exit status: 0 guest powered off, 1 error, 2 usage error, 3 guest reset/reboot,\n"
         "             128+N stopped by signal N\n";
}

Result<uint32_t> parse_u32(const std::string& opt, const std::string& v) {
  uint32_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size() || v.empty())
    return fail(opt + ": '" + v + "' is not a positive integer");
  return n;
}

Status check_host_port(const std::string& v) {
  auto colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == v.size())
    return fail("--metrics: '" + v + "' is not HOST:PORT (e.g. 127.0.0.1:9100)");
  uint32_t port = 0;
  std::string ps = v.substr(colon + 1);
  auto [p, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), port);
  if (ec != std::errc() || p != ps.data() + ps.size() || port > 65535)
    return fail("--metrics: port '" + ps + "' is not a number in 0..65535");
  return {};
}

namespace {

// "k=v,k=v" -> pairs; refuses empty keys, keys without '=' and repeated keys.
Result<std::vector<std::pair<std::string, std::string>>> split_kv(const std::string& opt,
                                                                   const std::string& value) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  while (pos <= value.size()) {
    size_t comma = value.find(',', pos);
    if (comma == std::string::npos) comma = value.size();
    std::string item = value.substr(pos, comma - pos);
    auto eq = item.find('=');
    if (item.empty() || eq == std::string::npos || eq == 0)
      return fail(opt + ": '" + item + "' is not KEY=VALUE (e.g. " +
                  (opt == "--net" ? "tap=tap0" : opt == "--vf" ? "pf=0000:01:00.0" : "path=disk.img") + ")");
    std::string key = item.substr(0, eq);
    for (const auto& kv : out)
      if (kv.first == key) return fail(opt + ": '" + key + "' given twice");
    out.emplace_back(std::move(key), item.substr(eq + 1));
    pos = comma + 1;
  }
  return out;
}

Result<bool> parse_onoff(const std::string& opt, const std::string& key, const std::string& v) {
  if (v == "on" || v == "true" || v == "yes" || v == "1") return true;
  if (v == "off" || v == "false" || v == "no" || v == "0") return false;
  return fail(opt + ": " + key + "='" + v + "' is not on or off");
}

Result<uint16_t> parse_queues(const std::string& opt, const std::string& v) {
  auto n = parse_u32(opt + " queues", v);
  if (!n) return std::unexpected(n.error());
  if (*n == 0 || *n > kMaxDeviceQueues)
    return fail(opt + ": queues=" + v + " is outside 1.." + std::to_string(kMaxDeviceQueues));
  return static_cast<uint16_t>(*n);
}

// Ring options common to every virtio device; false when `key` is not one of them.
Result<bool> parse_ring_option(const std::string& opt, const std::string& key,
                               const std::string& v, RingOptions& ring) {
  if (key == "packed" || key == "event_idx" || key == "indirect") {
    auto b = parse_onoff(opt, key, v);
    if (!b) return std::unexpected(b.error());
    (key == "packed" ? ring.packed : key == "event_idx" ? ring.event_idx : ring.indirect) = *b;
    return true;
  }
  if (key == "queue_size") {
    auto n = parse_u32(opt + " queue_size", v);
    if (!n) return std::unexpected(n.error());
    if (*n < 2 || *n > 32768 || (*n & (*n - 1)) != 0)
      return fail(opt + ": queue_size=" + v + " is not a power of 2 in 2..32768");
    ring.queue_size = static_cast<uint16_t>(*n);
    return true;
  }
  return false;
}

}  // namespace

Result<std::array<uint8_t, 6>> parse_mac(const std::string& what, const std::string& v) {
  std::array<uint8_t, 6> mac{};
  auto bad = [&] { return fail(what + "'" + v + "' is not six hex bytes like 52:54:00:12:34:56"); };
  if (v.size() != 17) return bad();
  for (size_t i = 0; i < 6; ++i) {
    if (i > 0 && v[3 * i - 1] != ':') return bad();
    unsigned byte = 0;
    auto [p, ec] = std::from_chars(v.data() + 3 * i, v.data() + 3 * i + 2, byte, 16);
    if (ec != std::errc() || p != v.data() + 3 * i + 2) return bad();
    mac[i] = static_cast<uint8_t>(byte);
  }
  if (mac[0] & 1) return fail(what + "'" + v + "' is a multicast address (first byte odd)");
  return mac;
}

Result<DiskOption> parse_disk(const std::string& value) {
  const std::string opt = "--disk";
  auto kvs = split_kv(opt, value);
  if (!kvs) return std::unexpected(kvs.error());
  DiskOption d;
  bool have_path = false;
  for (const auto& [k, v] : *kvs) {
    auto ring = parse_ring_option(opt, k, v, d.ring);
    if (!ring) return std::unexpected(ring.error());
    if (*ring) continue;
    if (k == "path") {
      if (v.empty()) return fail("--disk: empty path");
      d.path = v;
      have_path = true;
    } else if (k == "vhost-user") {
      if (v.empty()) return fail("--disk: empty vhost-user socket path");
      d.vhost_user = v;
    } else if (k == "readonly" || k == "direct") {
      auto b = parse_onoff(opt, k, v);
      if (!b) return std::unexpected(b.error());
      (k == "readonly" ? d.readonly : d.direct) = *b;
    } else if (k == "queues") {
      auto q = parse_queues(opt, v);
      if (!q) return std::unexpected(q.error());
      d.queues = *q;
    } else if (k == "serial") {
      if (v.size() > 20) return fail("--disk: serial='" + v + "' is longer than 20 bytes");
      d.serial = v;
    } else if (k == "io") {
      if (!virtio::parse_blk_io(v)) return fail("--disk: io='" + v + "' is not auto, io_uring or sync");
      d.io = v;
    } else {
      return fail("--disk: unknown key '" + k +
                  "' (path, vhost-user, readonly, direct, queues, serial, io, packed, event_idx, "
                  "indirect, queue_size)");
    }
  }
  if (!d.vhost_user.empty()) {
    if (have_path || d.readonly || d.direct || !d.serial.empty() || d.io != "auto")
      return fail("--disk: vhost-user= takes only queues= and ring options (the back-end owns the "
                  "image: give path/readonly/direct/serial/io to it)");
    return d;
  }
  if (!have_path) return fail("--disk: path=FILE or vhost-user=SOCKET is required");
  return d;
}

Result<NetOption> parse_net(const std::string& value) {
  const std::string opt = "--net";
  auto kvs = split_kv(opt, value);
  if (!kvs) return std::unexpected(kvs.error());
  NetOption n;
  bool have_tap = false;
  for (const auto& [k, v] : *kvs) {
    auto ring = parse_ring_option(opt, k, v, n.ring);
    if (!ring) return std::unexpected(ring.error());
    if (*ring) continue;
    if (k == "vhost-user") {
      if (v.empty()) return fail("--net: empty vhost-user socket path");
      n.vhost_user = v;
    } else if (k == "tap") {
      // IFNAMSIZ is 16 including the terminating NUL.
      if (v.empty() || v.size() > 15 || v.find('/') != std::string::npos)
        return fail("--net: tap='" + v + "' is not an interface name (1..15 characters, no '/')");
      n.tap = v;
      have_tap = true;
    } else if (k == "mac") {
      auto m = parse_mac("--net: mac=", v);
      if (!m) return std::unexpected(m.error());
      n.mac = *m;
    } else if (k == "queues") {
      auto q = parse_queues(opt, v);
      if (!q) return std::unexpected(q.error());
      n.queues = *q;
    } else if (k == "vhost") {
      auto b = parse_onoff(opt, k, v);
      if (!b) return std::unexpected(b.error());
      n.vhost = *b;
    } else {
      return fail("--net: unknown key '" + k +
                  "' (tap, vhost-user, mac, queues, vhost, packed, event_idx, indirect, "
                  "queue_size)");
    }
  }
  if (!n.vhost_user.empty()) {
    if (have_tap || n.vhost)
      return fail("--net: vhost-user= and tap=/vhost= are two different back-ends: give one");
    return n;
  }
  if (!have_tap) return fail("--net: tap=NAME is required (create one with: ip tuntap add NAME mode tap)");
  return n;
}

Result<DeviceOption> parse_device(const std::string& value) {
  const std::string opt = "--device";
  auto kvs = split_kv(opt, value);
  if (!kvs) return std::unexpected(kvs.error());
  DeviceOption d;
  for (const auto& [k, v] : *kvs) {
    if (k != "path") return fail("--device: unknown key '" + k + "' (path)");
    // The address is the path's last component, as in /sys/bus/pci/devices/0000:02:00.0 or the
    // /sys/devices/pci0000:00/... path that link points to.
    std::string p = v;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    std::string last = p.substr(p.rfind('/') + 1);
    auto addr = PciAddress::parse(last);
    if (!addr)
      return fail("--device: path='" + v +
                  "' does not end in a PCI address (e.g. path=/sys/bus/pci/devices/0000:02:00.0)");
    d.path = p;
    d.address = *addr;
  }
  if (d.path.empty()) return fail("--device: path=/sys/bus/pci/devices/DDDD:BB:DD.F is required");
  return d;
}

Result<VfOption> parse_vf(const std::string& value) {
  const std::string opt = "--vf";
  auto kvs = split_kv(opt, value);
  if (!kvs) return std::unexpected(kvs.error());
  VfOption o;
  bool have_pf = false;
  std::string net;  // the other keys, handed to the shared VF settings parser
  for (const auto& [k, v] : *kvs) {
    if (k == "pf") {
      auto a = PciAddress::parse(v);
      if (!a) return fail("--vf: pf='" + v + "' is not a PCI address (e.g. pf=0000:01:00.0)");
      o.pf = *a;
      have_pf = true;
      continue;
    }
    if (!net.empty()) net += ',';
    net += k;
    net += '=';
    net += v;
  }
  if (!have_pf) return fail("--vf: pf=DDDD:BB:DD.F is required (the PF whose VF to take; see iovirt sriov list)");
  auto s = sriov::parse_vf_settings(net);
  if (!s) return fail("--vf: " + s.error().what());
  o.net = *s;
  return o;
}

Result<SriovArgs> parse_sriov_args(const std::vector<std::string>& in) {
  SriovArgs a;
  std::vector<std::string> args;
  for (const auto& s : in) {
    if (s == "--json") a.json = true;
    else args.push_back(s);
  }
  const char* subs = "list, enable, disable, bind, config, leases";
  if (args.empty()) return fail(std::string("sriov: no subcommand (") + subs + ")");
  const std::string& sub = args[0];
  auto want = [&](std::size_t min, std::size_t max, const char* form) -> Status {
    if (args.size() - 1 < min || args.size() - 1 > max)
      return fail(std::string("sriov ") + sub + ": usage: iovirt sriov " + form);
    return {};
  };
  auto device = [&](const std::string& what, const std::string& v) -> Result<PciAddress> {
    auto p = PciAddress::parse(v);
    if (!p) return fail("sriov " + sub + ": " + what + " '" + v + "' is not a PCI address DDDD:BB:DD.F (see iovirt sriov list)");
    return *p;
  };
  if (sub == "list" || sub == "leases") {
    if (auto s = want(0, 0, sub == "list" ? "list [--json]" : "leases [--json]"); !s) return std::unexpected(s.error());
    a.command = sub == "list" ? SriovCommand::List : SriovCommand::Leases;
  } else if (sub == "enable") {
    if (auto s = want(2, 2, "enable PF N"); !s) return std::unexpected(s.error());
    auto pf = device("PF", args[1]);
    if (!pf) return std::unexpected(pf.error());
    a.device = *pf;
    auto n = parse_u32("sriov enable", args[2]);
    if (!n) return std::unexpected(n.error());
    if (*n == 0) return fail("sriov enable: N must be at least 1 (to remove the VFs: iovirt sriov disable PF)");
    a.command = SriovCommand::Enable;
    a.count = *n;
  } else if (sub == "disable") {
    if (auto s = want(1, 1, "disable PF"); !s) return std::unexpected(s.error());
    auto pf = device("PF", args[1]);
    if (!pf) return std::unexpected(pf.error());
    a.device = *pf;
    a.command = SriovCommand::Disable;
  } else if (sub == "bind") {
    if (auto s = want(2, 2, "bind VF vfio|host"); !s) return std::unexpected(s.error());
    auto vf = device("VF", args[1]);
    if (!vf) return std::unexpected(vf.error());
    a.device = *vf;
    if (args[2] == "vfio" || args[2] == "vfio-pci") a.to_vfio = true;
    else if (args[2] == "host") a.to_vfio = false;
    else return fail("sriov bind: '" + args[2] + "' is not vfio or host");
    a.command = SriovCommand::Bind;
  } else if (sub == "config") {
    if (auto s = want(1, 2, "config VF [mac=..,vlan=..,...]  (VF: DDDD:BB:DD.F or PF-NETDEV:vfN)"); !s)
      return std::unexpected(s.error());
    auto t = sriov::parse_vf_target(args[1]);
    if (!t) return fail("sriov config: " + t.error().what());
    a.target = *t;
    if (args.size() == 3) {
      auto st = sriov::parse_vf_settings(args[2]);
      if (!st) return fail("sriov config: " + st.error().what());
      if (st->empty()) return fail("sriov config: no settings given (leave them out to show the current ones)");
      a.settings = *st;
    }
    a.command = SriovCommand::Config;
  } else {
    return fail("sriov: unknown subcommand '" + sub + "' (" + subs + ")");
  }
  return a;
}

Result<ParsedArgs> parse_args(const std::vector<std::string>& args) {
  ParsedArgs out;
  if (args.empty()) return fail("no command given (try: iovirt run --kernel PATH, or iovirt --help)");
  const std::string& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    out.command = Command::Help;
    return out;
  }
  if (cmd == "--version" || cmd == "version") {
    out.command = Command::Version;
    return out;
  }
  if (cmd == "sriov") {
    out.command = Command::Sriov;
    for (size_t i = 1; i < args.size(); ++i)
      if (args[i] == "--help" || args[i] == "-h") {
        out.command = Command::Help;
        return out;
      }
    auto s = parse_sriov_args(std::vector<std::string>(args.begin() + 1, args.end()));
    if (!s) return std::unexpected(s.error());
    out.sriov = std::move(*s);
    return out;
  }
  if (cmd != "run") return fail("unknown command '" + cmd + "' (the commands are: run, sriov)");
  out.command = Command::Run;
  bool have_kernel = false;
  for (size_t i = 1; i < args.size(); ++i) {
    std::string opt = args[i];
    std::string val;
    bool inline_val = false;
    if (auto eq = opt.find('='); opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt = opt.substr(0, eq);
      inline_val = true;
    }
    if (opt == "--help" || opt == "-h") {
      out.command = Command::Help;
      return out;
    }
    if (opt == "--hugepages") {
      if (inline_val) return fail("--hugepages takes no value");
      out.vm.hugepages = true;
      continue;
    }
    static const char* kWithValue[] = {"--kernel", "--initrd", "--cmdline", "--cpus",
                                       "--memory", "--metrics", "--disk",   "--net",
                                       "--device", "--vf"};
    bool known = false;
    for (const char* k : kWithValue) known |= (opt == k);
    if (!known) return fail("unknown option '" + opt + "' (see iovirt --help)");
    if (!inline_val) {
      if (i + 1 >= args.size()) return fail(opt + " needs a value");
      val = args[++i];
    }
    if (opt == "--kernel") {
      if (val.empty()) return fail("--kernel: empty path");
      out.vm.kernel = val;
      have_kernel = true;
    } else if (opt == "--initrd") {
      if (val.empty()) return fail("--initrd: empty path");
      out.vm.initrd = val;
    } else if (opt == "--cmdline") {
      out.vm.cmdline = val;
    } else if (opt == "--cpus") {
      auto parsed = parse_u32(opt, val);
      if (!parsed) return std::unexpected(parsed.error());
      uint32_t n = *parsed;
      if (n == 0) return fail("--cpus: a VM needs at least one vCPU");
      if (n > kMaxCpus) return fail("--cpus: " + val + " is more than iovirt supports (" + std::to_string(kMaxCpus) + ")");
      out.vm.cpus = n;
    } else if (opt == "--memory") {
      auto sz = parse_size(val);
      if (!sz) return fail("--memory: " + sz.error().what());
      if (*sz < kMinMemory) return fail("--memory: " + val + " is too small (minimum 64M)");
      if (*sz > kMaxMemory) return fail("--memory: " + val + " is too large (maximum 1T)");
      if (*sz % (2ull << 20)) return fail("--memory: " + val + " is not a multiple of 2M");
      out.vm.memory = *sz;
    } else if (opt == "--metrics") {
      if (auto s = check_host_port(val); !s) return std::unexpected(s.error());
      out.vm.metrics = val;
    } else if (opt == "--disk") {
      auto d = parse_disk(val);
      if (!d) return std::unexpected(d.error());
      out.vm.disks.push_back(std::move(*d));
    } else if (opt == "--net") {
      auto n = parse_net(val);
      if (!n) return std::unexpected(n.error());
      out.vm.nets.push_back(std::move(*n));
    } else if (opt == "--device") {
      auto d = parse_device(val);
      if (!d) return std::unexpected(d.error());
      for (const auto& o : out.vm.devices)
        if (o.address == d->address)
          return fail("--device: " + d->address.to_string() + " given twice");
      out.vm.devices.push_back(std::move(*d));
    } else if (opt == "--vf") {
      auto v = parse_vf(val);
      if (!v) return std::unexpected(v.error());
      out.vm.vfs.push_back(std::move(*v));
    }
  }
  if (!have_kernel) return fail("run: --kernel PATH is required");
  return out;
}

}  // namespace iovirt
