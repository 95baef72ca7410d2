// iovirt-vhost command line: what each option sets, and one-line refusals naming the option.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "iovirt/vmm/vhost_cli.hpp"

namespace iovirt {
namespace {

Result<VhostArgs> parse(std::vector<std::string> a) {
  return parse_vhost_args(a);
}

void expect_error(std::vector<std::string> a, const std::string& part) {
  auto r = parse(std::move(a));
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find(part), std::string::npos) << r.error().message();
  EXPECT_EQ(r.error().message().find('\n'), std::string::npos) << "error is not one line";
}

TEST(VhostCli, BlkWithEveryOption) {
  auto r = parse({"blk", "--socket", "/run/b.sock", "--file=disk.img", "--direct", "--readonly",
                  "--queues", "4", "--queue-size=256", "--serial", "abc",
                  "--metrics", "127.0.0.1:9100", "--poll-us", "50", "--io", "io_uring"});
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->command, VhostCommand::Blk);
  EXPECT_EQ(r->blk.socket, "/run/b.sock");
  EXPECT_EQ(r->blk.file, "disk.img");
  EXPECT_TRUE(r->blk.direct);
  EXPECT_TRUE(r->blk.readonly);
  EXPECT_EQ(r->blk.queues, 4);
  EXPECT_EQ(r->blk.queue_size, 256);
  EXPECT_EQ(r->blk.serial, "abc");
  EXPECT_EQ(r->blk.metrics, "127.0.0.1:9100");
  EXPECT_EQ(r->blk.poll_us, 50u);
  EXPECT_EQ(r->blk.io, "io_uring");
}

TEST(VhostCli, NetWithEveryOption) {
  auto r = parse({"net", "--socket=/run/n.sock", "--backend", "source=128", "--queues", "2",
                  "--queue-size", "256", "--mac", "52:54:00:12:34:56", "--poll-us", "20",
                  "--poll-gap-ns=4000", "--metrics", "127.0.0.1:9101"});
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->command, VhostCommand::Net);
  EXPECT_EQ(r->net.socket, "/run/n.sock");
  EXPECT_EQ(r->net.backend, NetBackendKind::Source);
  EXPECT_EQ(r->net.frame_len, 128u);
  EXPECT_EQ(r->net.queues, 2);
  EXPECT_EQ(r->net.queue_size, 256);
  ASSERT_TRUE(r->net.mac.has_value());
  EXPECT_EQ((*r->net.mac)[5], 0x56);
  EXPECT_EQ(r->net.poll_us, 20u);
  EXPECT_EQ(r->net.poll_gap_ns, 4000u);
  EXPECT_EQ(r->net.metrics, "127.0.0.1:9101");
}

TEST(VhostCli, NetBackends) {
  EXPECT_EQ(parse({"net", "--socket", "s", "--backend", "ring-loopback"})->net.backend,
            NetBackendKind::Loopback);
  EXPECT_EQ(parse({"net", "--socket", "s", "--backend", "sink"})->net.backend, NetBackendKind::Sink);
  auto src = parse({"net", "--socket", "s", "--backend", "source"});
  EXPECT_EQ(src->net.frame_len, 60u);
  auto tap = parse({"net", "--socket", "s", "--backend", "tap=vtap0"});
  EXPECT_EQ(tap->net.backend, NetBackendKind::Tap);
  EXPECT_EQ(tap->net.tap, "vtap0");
  auto dpdk = parse({"net", "--socket", "s", "--backend=dpdk=--vdev=net_ring0 --no-huge;port=0"});
  ASSERT_TRUE(dpdk.has_value()) << dpdk.error().message();
  EXPECT_EQ(dpdk->net.backend, NetBackendKind::Dpdk);
  EXPECT_EQ(dpdk->net.dpdk, "--vdev=net_ring0 --no-huge;port=0");
  EXPECT_EQ(parse({"net", "--help"})->command, VhostCommand::Help);
}

TEST(VhostCli, Defaults) {
  auto r = parse({"blk", "--socket", "s", "--file", "f"});
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->blk.direct);
  EXPECT_FALSE(r->blk.readonly);
  EXPECT_EQ(r->blk.queues, 1);
  EXPECT_EQ(r->blk.queue_size, 1024);
  EXPECT_TRUE(r->blk.metrics.empty());
  EXPECT_EQ(r->blk.poll_us, 0u);
  EXPECT_EQ(r->blk.io, "auto");
}

TEST(VhostCli, HelpAndVersion) {
  EXPECT_EQ(parse({"--help"})->command, VhostCommand::Help);
  EXPECT_EQ(parse({"blk", "--help"})->command, VhostCommand::Help);
  EXPECT_EQ(parse({"--version"})->command, VhostCommand::Version);
}

TEST(VhostCli, Refusals) {
  expect_error({}, "no command");
  expect_error({"disk"}, "unknown command 'disk'");
  expect_error({"net", "--socket", "s"}, "--backend is required");
  expect_error({"net", "--backend", "sink"}, "--socket PATH is required");
  expect_error({"net", "--socket", "s", "--backend", "bogus"}, "not one of ring-loopback");
  expect_error({"net", "--socket", "s", "--backend", "sink=1"}, "takes no value");
  expect_error({"net", "--socket", "s", "--backend", "source=59"}, "not in 60..1514");
  expect_error({"net", "--socket", "s", "--backend", "source=1515"}, "not in 60..1514");
  expect_error({"net", "--socket", "s", "--backend", "tap="}, "interface name");
  expect_error({"net", "--socket", "s", "--backend", "tap=abcdefghijklmnop"}, "interface name");
  expect_error({"net", "--socket", "s", "--backend", "dpdk="}, "EAL arguments");
  expect_error({"net", "--socket", "s", "--backend", "sink", "--mac", "01:00:00:00:00:01"},
               "multicast");
  expect_error({"net", "--socket", "s", "--backend", "sink", "--mac", "52:54"}, "six hex bytes");
  expect_error({"net", "--socket", "s", "--backend", "sink", "--file", "f"}, "unknown option");
  expect_error({"net", "--socket", "s", "--backend", "sink", "--queues", "65"}, "--queues");
  expect_error({"net", "--socket", "s", "--backend", "sink", "--poll-gap-ns", "1000001"},
               "--poll-gap-ns: 1000001 is not in 0..1000000");
  expect_error({"blk", "--socket", "s", "--file", "f", "--poll-gap-ns", "10"}, "unknown option");
  expect_error({"blk", "--file", "f"}, "--socket PATH is required");
  expect_error({"blk", "--socket", "s"}, "--file FILE is required");
  expect_error({"blk", "--socket", "s", "--file", "f", "--queues", "0"}, "--queues");
  expect_error({"blk", "--socket", "s", "--file", "f", "--queues", "65"}, "--queues");
  expect_error({"blk", "--socket", "s", "--file", "f", "--queues", "two"}, "not a positive integer");
  expect_error({"blk", "--socket", "s", "--file", "f", "--queue-size", "100"}, "power of 2");
  expect_error({"blk", "--socket", "s", "--file", "f", "--queue-size", "2048"}, "power of 2");
  expect_error({"blk", "--socket", "s", "--file", "f", "--metrics", "9100"}, "HOST:PORT");
  expect_error({"blk", "--socket", "s", "--file", "f", "--poll-us", "1000001"}, "--poll-us");
  expect_error({"blk", "--socket", "s", "--file", "f", "--poll-us", "-1"}, "not a positive");
  expect_error({"blk", "--socket", "s", "--file", "f", "--serial", std::string(21, 'x')},
               "longer than 20");
  expect_error({"blk", "--socket", "s", "--file", "f", "--direct=on"}, "takes no value");
  expect_error({"blk", "--socket", "s", "--file", "f", "--bogus"}, "unknown option '--bogus'");
  expect_error({"blk", "--socket", "s", "--file", "f", "--io", "aio"}, "--io: 'aio' is not auto");
  expect_error({"blk", "--socket"}, "--socket needs a value");
  expect_error({"blk", "--socket", "", "--file", "f"}, "empty path");
}

}  // namespace
}  // namespace iovirt
