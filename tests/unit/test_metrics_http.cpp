#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "iovirt/core/fd.hpp"
#include "iovirt/core/metrics_http.hpp"

namespace iovirt {
namespace {

struct Response {
  std::string status_line;
  std::string headers;  // raw header block, lines end in \r\n
  std::string body;
};

// A plain HTTP/1.1 client on a socket: the test should not trust the server's own library.
Response http_request(int port, const std::string& method, const std::string& path) {
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(s.valid());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string req =
      method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  EXPECT_EQ(::send(s.get(), req.data(), req.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(req.size()));
  std::string raw;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(s.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  Response r;
  size_t eol = raw.find("\r\n");
  size_t end = raw.find("\r\n\r\n");
  if (eol == std::string::npos || end == std::string::npos) {
    ADD_FAILURE() << "malformed response: " << raw;
    return r;
  }
  r.status_line = raw.substr(0, eol);
  r.headers = raw.substr(eol + 2, end + 2 - (eol + 2));
  r.body = raw.substr(end + 4);
  return r;
}

// A fresh registry and server on a free loopback port for each test.
class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = MetricsServer::start(registry_, "127.0.0.1:0");
    ASSERT_TRUE(s.has_value()) << s.error().message();
    server_ = std::move(*s);
  }

  MetricsRegistry registry_;
  std::unique_ptr<MetricsServer> server_;
};

TEST_F(MetricsServerTest, PortZeroBindsAFreePortAndReportsIt) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_LE(server_->port(), 65535);
}

TEST_F(MetricsServerTest, GetMetricsReturnsExpositionWithPrometheusContentType) {
  registry_.counter("iovirt_test_total", "a test counter", {{"q", "0"}}).inc(3);

  Response r = http_request(server_->port(), "GET", "/metrics");

  EXPECT_EQ(r.status_line, "HTTP/1.1 200 OK");
  EXPECT_NE(r.headers.find("Content-Type: text/plain; version=0.0.4"), std::string::npos)
      << r.headers;
  EXPECT_NE(r.headers.find("Content-Length: " + std::to_string(r.body.size()) + "\r\n"),
            std::string::npos)
      << r.headers;
  EXPECT_EQ(r.body, registry_.expose());
  EXPECT_NE(r.body.find("iovirt_test_total{q=\"0\"} 3\n"), std::string::npos) << r.body;
}

TEST_F(MetricsServerTest, EachScrapeSeesCurrentValues) {
  Counter& c = registry_.counter("scrape_test_total", "h");

  c.inc(1);
  Response first = http_request(server_->port(), "GET", "/metrics");
  c.inc(1);
  Response second = http_request(server_->port(), "GET", "/metrics");

  EXPECT_NE(first.body.find("scrape_test_total 1\n"), std::string::npos) << first.body;
  EXPECT_NE(second.body.find("scrape_test_total 2\n"), std::string::npos) << second.body;
}

TEST_F(MetricsServerTest, HeadReturnsHeadersWithoutBody) {
  Response r = http_request(server_->port(), "HEAD", "/metrics");

  EXPECT_EQ(r.status_line, "HTTP/1.1 200 OK");
  EXPECT_TRUE(r.body.empty()) << r.body;
}

TEST_F(MetricsServerTest, OtherPathIsNotFound) {
  Response r = http_request(server_->port(), "GET", "/");
  Response r2 = http_request(server_->port(), "GET", "/metrics/extra");

  EXPECT_EQ(r.status_line, "HTTP/1.1 404 Not Found");
  EXPECT_EQ(r2.status_line, "HTTP/1.1 404 Not Found");
}

TEST_F(MetricsServerTest, PostToMetricsIsMethodNotAllowed) {
  Response r = http_request(server_->port(), "POST", "/metrics");

  EXPECT_EQ(r.status_line, "HTTP/1.1 405 Method Not Allowed");
}

TEST_F(MetricsServerTest, PortInUseIsReportedWithAddressAndErrno) {
  MetricsRegistry other;
  const std::string addr = "127.0.0.1:" + std::to_string(server_->port());

  auto second = MetricsServer::start(other, addr);

  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code(), EADDRINUSE);
  EXPECT_NE(second.error().message().find("metrics: cannot listen on " + addr), std::string::npos)
      << second.error().message();
}

TEST(MetricsServer, MalformedListenAddressIsRefused) {
  MetricsRegistry reg;

  EXPECT_FALSE(MetricsServer::start(reg, "9100").has_value());
  EXPECT_FALSE(MetricsServer::start(reg, "127.0.0.1:").has_value());
  EXPECT_FALSE(MetricsServer::start(reg, "127.0.0.1:70000").has_value());
  EXPECT_FALSE(MetricsServer::start(reg, "127.0.0.1:9100s").has_value());
  EXPECT_FALSE(MetricsServer::start(reg, "127.0.0.1:1,127.0.0.1:2").has_value());
}

}  // namespace
}  // namespace iovirt
