// The `iovirt` command line: what a valid run line yields, and that every mistake is reported
// as one line naming the option at fault.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "iovirt/vmm/config.hpp"

namespace iovirt {
namespace {

using Args = std::vector<std::string>;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;

// The error of a command line that must fail ("(parsed)" if it did not).
std::string error_of(const Args& args) {
  auto r = parse_args(args);
  return r ? std::string("(parsed)") : r.error().message();
}

::testing::AssertionResult is_one_line_naming(const std::string& msg, const std::string& what) {
  if (msg == "(parsed)") return ::testing::AssertionFailure() << "the command line was accepted";
  if (msg.find('\n') != std::string::npos)
    return ::testing::AssertionFailure() << "multi-line error: " << msg;
  if (msg.find(what) == std::string::npos)
    return ::testing::AssertionFailure() << "error does not name '" << what << "': " << msg;
  return ::testing::AssertionSuccess();
}

// ---- accepted command lines ----------------------------------------------------------------

TEST(ParseArgs, FullRunLineFillsEveryField) {
  auto r = parse_args({"run", "--kernel", "/k/bzImage", "--initrd", "/k/initrd", "--cmdline",
                       "console=ttyS0 quiet", "--cpus", "4", "--memory", "2G", "--hugepages",
                       "--metrics", "127.0.0.1:9100"});

  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->command, Command::Run);
  EXPECT_EQ(r->vm.kernel, "/k/bzImage");
  EXPECT_EQ(r->vm.initrd, "/k/initrd");
  EXPECT_EQ(r->vm.cmdline, "console=ttyS0 quiet");
  EXPECT_EQ(r->vm.cpus, 4u);
  EXPECT_EQ(r->vm.memory, 2 * kGiB);
  EXPECT_TRUE(r->vm.hugepages);
  EXPECT_EQ(r->vm.metrics, "127.0.0.1:9100");
}

TEST(ParseArgs, KeyEqualsValueFormIsAccepted) {
  auto r = parse_args(
      {"run", "--kernel=/k", "--cpus=2", "--memory=1G", "--cmdline=a=b c", "--metrics=[::1]:9100"});

  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->vm.kernel, "/k");
  EXPECT_EQ(r->vm.cpus, 2u);
  EXPECT_EQ(r->vm.memory, kGiB);
  EXPECT_EQ(r->vm.cmdline, "a=b c") << "only the first '=' separates the value";
  EXPECT_EQ(r->vm.metrics, "[::1]:9100");
}

TEST(ParseArgs, OnlyKernelGivenLeavesTheDefaults) {
  auto r = parse_args({"run", "--kernel", "/k"});

  ASSERT_TRUE(r) << r.error().message();
  const VmConfig defaults;
  EXPECT_EQ(r->vm.cpus, 1u);
  EXPECT_EQ(r->vm.memory, 512 * kMiB);
  EXPECT_EQ(r->vm.cmdline, defaults.cmdline);
  EXPECT_TRUE(r->vm.initrd.empty());
  EXPECT_TRUE(r->vm.metrics.empty());
  EXPECT_FALSE(r->vm.hugepages);
}

TEST(ParseArgs, HelpAndVersionAreCommands) {
  auto help = parse_args({"--help"});
  auto version = parse_args({"--version"});
  auto help_in_run = parse_args({"run", "--help"});

  ASSERT_TRUE(help && version && help_in_run);
  EXPECT_EQ(help->command, Command::Help);
  EXPECT_EQ(version->command, Command::Version);
  EXPECT_EQ(help_in_run->command, Command::Help);
}

TEST(ParseArgs, LimitsAtTheEdgesAreAccepted) {
  auto r = parse_args({"run", "--kernel", "/k", "--cpus", "255", "--memory", "64M"});
  auto big = parse_args({"run", "--kernel", "/k", "--memory", "1T"});

  ASSERT_TRUE(r) << r.error().message();
  ASSERT_TRUE(big) << big.error().message();
  EXPECT_EQ(r->vm.cpus, 255u);
  EXPECT_EQ(r->vm.memory, 64 * kMiB);
  EXPECT_EQ(big->vm.memory, kMaxMemory);
}

// ---- refused command lines: one line naming the option -------------------------------------

TEST(ParseArgs, NoArgumentsIsAnError) {
  EXPECT_TRUE(is_one_line_naming(error_of({}), "no command"));
}

TEST(ParseArgs, MissingKernelIsReported) {
  EXPECT_TRUE(is_one_line_naming(error_of({"run"}), "--kernel"));
  EXPECT_TRUE(is_one_line_naming(error_of({"run", "--cpus", "2"}), "--kernel"));
}

TEST(ParseArgs, UnknownOptionIsNamed) {
  EXPECT_TRUE(
      is_one_line_naming(error_of({"run", "--kernel", "/k", "--frobnicate"}), "--frobnicate"));
  EXPECT_TRUE(is_one_line_naming(error_of({"run", "--kernel", "/k", "--frob=1"}), "--frob"));
}

TEST(ParseArgs, UnknownCommandIsNamed) {
  EXPECT_TRUE(is_one_line_naming(error_of({"start", "--kernel", "/k"}), "start"));
}

TEST(ParseArgs, OptionWithoutItsValueIsNamed) {
  for (const char* opt : {"--kernel", "--initrd", "--cmdline", "--cpus", "--memory", "--metrics"}) {
    const std::string e = error_of({"run", "--kernel", "/k", opt});

    EXPECT_TRUE(is_one_line_naming(e, std::string(opt) + " needs a value")) << opt;
  }
}

TEST(ParseArgs, EmptyPathsAreRefused) {
  EXPECT_TRUE(is_one_line_naming(error_of({"run", "--kernel="}), "--kernel"));
  EXPECT_TRUE(is_one_line_naming(error_of({"run", "--kernel", "/k", "--initrd", ""}), "--initrd"));
}

TEST(ParseArgs, HugepagesTakesNoValue) {
  EXPECT_TRUE(
      is_one_line_naming(error_of({"run", "--kernel", "/k", "--hugepages=yes"}), "--hugepages"));
}

TEST(ParseArgs, BadCpuCountsAreRefused) {
  for (const char* v : {"0", "abc", "256", "-1", "2x", "", "4294967296"}) {
    const std::string e = error_of({"run", "--kernel", "/k", "--cpus", v});

    EXPECT_TRUE(is_one_line_naming(e, "--cpus")) << "--cpus '" << v << "'";
  }
}

TEST(ParseArgs, BadMemorySizesAreRefused) {
  // zero, below the 64M minimum, above the 1T maximum, bytes below the minimum, not a number,
  // a suffix without a number, not a multiple of 2M.
  for (const char* v : {"0", "1k", "2T", "12345", "garbage", "M", "12345M", "65M"}) {
    const std::string e = error_of({"run", "--kernel", "/k", "--memory", v});

    EXPECT_TRUE(is_one_line_naming(e, "--memory")) << "--memory '" << v << "'";
  }
}

TEST(ParseArgs, BadMetricsAddressesAreRefused) {
  for (const char* v : {"127.0.0.1", "127.0.0.1:", ":9100", "127.0.0.1:70000", "127.0.0.1:http"}) {
    const std::string e = error_of({"run", "--kernel", "/k", "--metrics", v});

    EXPECT_TRUE(is_one_line_naming(e, "--metrics")) << "--metrics '" << v << "'";
  }
}

// ---- parse_size ----------------------------------------------------------------------------

TEST(ParseSize, SuffixesAreBinaryMultiples) {
  EXPECT_EQ(parse_size("512M").value_or(0), 512 * kMiB);
  EXPECT_EQ(parse_size("2G").value_or(0), 2 * kGiB);
  EXPECT_EQ(parse_size("64k").value_or(0), 64u * 1024);
  EXPECT_EQ(parse_size("1GiB").value_or(0), kGiB);
  EXPECT_EQ(parse_size("1MB").value_or(0), kMiB);
  EXPECT_EQ(parse_size("3T").value_or(0), 3ull << 40);
  EXPECT_EQ(parse_size("1048576").value_or(0), kMiB);
}

TEST(ParseSize, OverflowIsRefused) {
  auto shifted = parse_size("99999999999T");
  auto digits = parse_size("99999999999999999999999");

  ASSERT_FALSE(shifted);
  ASSERT_FALSE(digits);
  EXPECT_NE(shifted.error().message().find("too large"), std::string::npos)
      << shifted.error().message();
  EXPECT_NE(digits.error().message().find("too large"), std::string::npos)
      << digits.error().message();
}

TEST(ParseSize, LargestRepresentableShiftIsAccepted) {
  EXPECT_EQ(parse_size("16777215T").value_or(0), 16777215ull << 40);
  EXPECT_FALSE(parse_size("16777216T"));  // 2^64
}

TEST(ParseSize, GarbageIsRefused) {
  for (const char* v : {"", "M", "G1", "-1", " 1M", "1X", "1Mx", "1MiBs", "1.5G", "0", "0M"}) {
    auto r = parse_size(v);

    EXPECT_FALSE(r) << "'" << v << "' parsed as " << r.value_or(0);
  }
}

}  // namespace
}  // namespace iovirt

namespace iovirt {
namespace {

// ---- --disk and --net ------------------------------------------------------------------------

TEST(ParseDevices, DiskWithEveryKey) {
  auto r = parse_args({"run", "--kernel", "/k", "--disk",
                       "path=/d/a.img,readonly=on,direct=on,queues=4,serial=SN1,packed=on,"
                       "event_idx=off,indirect=off,queue_size=1024,io=sync",
                       "--disk=path=/d/b.img"});
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->vm.disks.size(), 2u);
  const DiskOption& a = r->vm.disks[0];
  EXPECT_EQ(a.path, "/d/a.img");
  EXPECT_TRUE(a.readonly);
  EXPECT_TRUE(a.direct);
  EXPECT_EQ(a.queues, 4);
  EXPECT_EQ(a.serial, "SN1");
  EXPECT_TRUE(a.ring.packed);
  EXPECT_FALSE(a.ring.event_idx);
  EXPECT_FALSE(a.ring.indirect);
  EXPECT_EQ(a.ring.queue_size, 1024);
  EXPECT_EQ(a.io, "sync");
  const DiskOption& b = r->vm.disks[1];
  EXPECT_EQ(b.io, "auto");
  EXPECT_EQ(b.path, "/d/b.img");
  EXPECT_FALSE(b.readonly);
  EXPECT_EQ(b.queues, 1);
  EXPECT_FALSE(b.ring.packed);
  EXPECT_TRUE(b.ring.event_idx);
  EXPECT_EQ(b.ring.queue_size, 256);
}

TEST(ParseDevices, NetWithEveryKey) {
  auto r = parse_args({"run", "--kernel", "/k", "--net",
                       "tap=tap0,mac=52:54:00:ab:CD:0f,queues=2,vhost=on,packed=on"});
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->vm.nets.size(), 1u);
  const NetOption& n = r->vm.nets[0];
  EXPECT_EQ(n.tap, "tap0");
  ASSERT_TRUE(n.mac);
  EXPECT_EQ(*n.mac, (std::array<uint8_t, 6>{0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f}));
  EXPECT_EQ(n.queues, 2);
  EXPECT_TRUE(n.vhost);
  EXPECT_TRUE(n.ring.packed);
  auto plain = parse_net("tap=t");
  ASSERT_TRUE(plain);
  EXPECT_FALSE(plain->mac);
  EXPECT_FALSE(plain->vhost);
}

TEST(ParseDevices, MistakesAreOneLineNamingTheKey) {
  struct Case {
    std::string opt, value, names;
  };
  const std::vector<Case> cases = {
      {"--disk", "", "--disk"},
      {"--disk", "readonly=on", "path=FILE or vhost-user=SOCKET is required"},
      {"--disk", "path=", "empty path"},
      {"--disk", "path=a,path=b", "given twice"},
      {"--disk", "path=a,,readonly=on", "not KEY=VALUE"},
      {"--disk", "path=a,readonly", "'readonly' is not KEY=VALUE"},
      {"--disk", "path=a,readonly=maybe", "readonly='maybe'"},
      {"--disk", "path=a,queues=0", "queues=0"},
      {"--disk", "path=a,queues=65", "queues=65"},
      {"--disk", "path=a,queues=x", "queues"},
      {"--disk", "path=a,queue_size=100", "queue_size=100"},
      {"--disk", "path=a,queue_size=65536", "queue_size=65536"},
      {"--disk", "path=a,serial=123456789012345678901", "longer than 20"},
      {"--disk", "path=a,colour=red", "unknown key 'colour'"},
      {"--disk", "path=a,io=threads", "io='threads' is not auto, io_uring or sync"},
      {"--disk", "vhost-user=s,io=sync", "give path/readonly/direct/serial/io to it"},
      {"--net", "mac=52:54:00:00:00:01", "tap=NAME is required"},
      {"--net", "tap=", "not an interface name"},
      {"--net", "tap=a-very-long-name0", "not an interface name"},
      {"--net", "tap=../x", "not an interface name"},
      {"--net", "tap=t,mac=52:54:00:00:00", "mac='52:54:00:00:00'"},
      {"--net", "tap=t,mac=52-54-00-00-00-01", "mac="},
      {"--net", "tap=t,mac=zz:54:00:00:00:01", "mac="},
      {"--net", "tap=t,mac=01:00:5e:00:00:01", "multicast"},
      {"--net", "tap=t,vhost=2", "vhost='2'"},
      {"--net", "tap=t,speed=10G", "unknown key 'speed'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.opt + " " + c.value);
    EXPECT_TRUE(is_one_line_naming(error_of({"run", "--kernel", "/k", c.opt, c.value}), c.names));
  }
  EXPECT_TRUE(is_one_line_naming(error_of({"run", "--kernel", "/k", "--disk"}), "--disk needs a value"));
}

}  // namespace
}  // namespace iovirt

namespace iovirt {
namespace {

TEST(ParseDevice, SysfsPathGivesTheAddress) {
  auto d = parse_device("path=/sys/bus/pci/devices/0000:02:00.0");
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(d->address.to_string(), "0000:02:00.0");
  EXPECT_EQ(d->path, "/sys/bus/pci/devices/0000:02:00.0");
  auto real = parse_device("path=/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.1/");
  ASSERT_TRUE(real) << real.error().what();
  EXPECT_EQ(real->address.to_string(), "0000:01:00.1");
}

TEST(ParseDevice, BadValuesAreOneLineErrors) {
  for (const char* v : {"", "path=", "path=/sys/bus/pci/devices/", "path=/dev/vfio/11",
                        "path=/sys/bus/pci/devices/02:00.0", "path=/sys/bus/pci/devices/0000:02:20.0",
                        "host=0000:02:00.0", "path=/sys/bus/pci/devices/0000:02:00.0,rombar=0"}) {
    auto d = parse_device(v);
    ASSERT_FALSE(d) << v;
    EXPECT_NE(d.error().what().find("--device"), std::string::npos) << d.error().what();
    EXPECT_EQ(d.error().what().find('\n'), std::string::npos);
  }
}

TEST(ParseDevice, RepeatableButNotTheSameFunctionTwice) {
  auto a = parse_args({"run", "--kernel", "k", "--device", "path=/sys/bus/pci/devices/0000:02:00.0",
                       "--device=path=/sys/bus/pci/devices/0000:01:00.1"});
  ASSERT_TRUE(a) << a.error().what();
  ASSERT_EQ(a->vm.devices.size(), 2u);
  EXPECT_EQ(a->vm.devices[1].address.to_string(), "0000:01:00.1");
  auto twice = parse_args({"run", "--kernel", "k", "--device", "path=/sys/bus/pci/devices/0000:02:00.0",
                           "--device", "path=/sys/devices/pci0000:00/0000:00:03.0/0000:02:00.0"});
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().what().find("given twice"), std::string::npos);
}

}  // namespace
}  // namespace iovirt

namespace iovirt {
namespace {

TEST(ParseVhostUser, DiskAndNetTakeASocket) {
  auto d = parse_disk("vhost-user=/run/blk.sock,queues=2");
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(d->vhost_user, "/run/blk.sock");
  EXPECT_EQ(d->queues, 2);
  EXPECT_TRUE(d->path.empty());
  auto n = parse_net("vhost-user=/run/net.sock,mac=52:54:00:12:34:56");
  ASSERT_TRUE(n) << n.error().what();
  EXPECT_EQ(n->vhost_user, "/run/net.sock");
  ASSERT_TRUE(n->mac);
  EXPECT_EQ((*n->mac)[5], 0x56);
  auto mq = parse_net("vhost-user=/run/net.sock,queues=4");
  ASSERT_TRUE(mq) << mq.error().what();
  EXPECT_EQ(mq->queues, 4);
  // The ring options pass through: the front-end offers the packed ring when the back-end can
  // restore it.
  auto packed = parse_net("vhost-user=/run/net.sock,packed=on");
  ASSERT_TRUE(packed) << packed.error().what();
  EXPECT_TRUE(packed->ring.packed);
  auto disk = parse_disk("vhost-user=/run/blk.sock,packed=on");
  ASSERT_TRUE(disk) << disk.error().what();
  EXPECT_TRUE(disk->ring.packed);
}

TEST(ParseVhostUser, OptionsThatBelongToTheBackendAreRefused) {
  for (const char* v : {"vhost-user=/s,path=/img", "vhost-user=/s,readonly=on", "vhost-user=/s,direct=on",
                        "vhost-user=/s,serial=x", "vhost-user="}) {
    auto d = parse_disk(v);
    ASSERT_FALSE(d) << v;
    EXPECT_NE(d.error().what().find("--disk"), std::string::npos);
  }
  for (const char* v :
       {"vhost-user=/s,tap=tap0", "vhost-user=/s,vhost=on", "vhost-user=/s,queues=65"}) {
    auto n = parse_net(v);
    ASSERT_FALSE(n) << v;
    EXPECT_NE(n.error().what().find("--net"), std::string::npos);
  }
}

}  // namespace
}  // namespace iovirt
