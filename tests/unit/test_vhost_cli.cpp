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
                  "--metrics", "127.0.0.1:9100", "--poll-us", "50"});
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
}

TEST(VhostCli, HelpAndVersion) {
  EXPECT_EQ(parse({"--help"})->command, VhostCommand::Help);
  EXPECT_EQ(parse({"blk", "--help"})->command, VhostCommand::Help);
  EXPECT_EQ(parse({"--version"})->command, VhostCommand::Version);
}

TEST(VhostCli, Refusals) {
  expect_error({}, "no command");
  expect_error({"disk"}, "unknown command 'disk'");
  expect_error({"net", "--socket", "s"}, "not implemented");
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
  expect_error({"blk", "--socket"}, "--socket needs a value");
  expect_error({"blk", "--socket", "", "--file", "f"}, "empty path");
}

}  // namespace
}  // namespace iovirt
