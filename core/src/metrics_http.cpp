#include "iovirt/core/metrics_http.hpp"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string_view>
#include <thread>

#include "iovirt/core/fd.hpp"
#include "iovirt/core/log.hpp"

namespace iovirt {

namespace {

struct HostPort {
  std::string host;  // without IPv6 brackets
  std::string port;
};

// Checked here rather than left to civetweb: its listening_ports option is a comma-separated
// list with suffixes ('s' for TLS, 'r' for redirect), so an unchecked string would be parsed as
// more than one address.
Result<HostPort> parse_host_port(const std::string& s) {
  const std::string what = "metrics: listen address '" + s + "'";
  size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == s.size())
    return fail(what + ": expected HOST:PORT");
  std::string host = s.substr(0, colon);
  std::string port = s.substr(colon + 1);
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port) > 65535)
    return fail(what + ": port must be a number 0-65535");
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return fail(what + ": bad [IPv6] host");
    if (mg_check_feature(MG_FEATURES_IPV6) == 0)
      return fail(what + ": this civetweb is built without IPv6; use an IPv4 address");
    host = host.substr(1, host.size() - 2);
  }
  if (host.find_first_of(",[] ") != std::string::npos) return fail(what + ": bad host");
  return HostPort{std::move(host), std::move(port)};
}

// civetweb reports a bind failure only as text; to give the caller an errno (EADDRINUSE,
// EADDRNOTAVAIL, EACCES) we repeat the bind the way civetweb does (SO_REUSEADDR) and keep its
// errno. Returns 0 when our bind succeeds, i.e. the failure was something else.
int probe_bind_errno(const HostPort& hp) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (::getaddrinfo(hp.host.c_str(), hp.port.c_str(), &hints, &res) != 0 || res == nullptr)
    return EADDRNOTAVAIL;
  int err = 0;
  {
    Fd s(::socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol));
    int one = 1;
    if (!s) {
      err = errno;
    } else if (::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
               ::bind(s.get(), res->ai_addr, res->ai_addrlen) < 0 || ::listen(s.get(), 1) < 0) {
      err = errno;
    }
  }
  ::freeaddrinfo(res);
  return err;
}

// Connects to the server's own listening socket and hangs up. Wildcard hosts are reached
// through loopback.
void poke_listener(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  if (::getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res) != 0 || res == nullptr) return;
  if (res->ai_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(res->ai_addr);
    if (in->sin_addr.s_addr == htonl(INADDR_ANY)) in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else if (res->ai_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(res->ai_addr);
    if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) in6->sin6_addr = in6addr_loopback;
  }
  Fd s(::socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol));
  if (s) (void)::connect(s.get(), res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
}

// mg_start2 reports failures in its error text only as "Failed to setup server ports"; the
// reason goes to the log callback, on the starting thread. start() points this at a string
// for the duration of mg_start2 to keep the first reason.
thread_local std::string* startup_log = nullptr;

int civetweb_log(const mg_connection*, const char* message) {
  if (startup_log != nullptr && startup_log->empty()) *startup_log = message;
  log_debug(std::string("metrics http: ") + message);
  return 1;  // handled: keep civetweb from printing to stderr itself
}

void send(mg_connection* conn, int status, const char* reason, std::string_view content_type,
          std::string_view body, bool head, const char* extra_headers = "") {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\n"
            "Content-Type: %.*s\r\n"
            "Content-Length: %zu\r\n"
            "%s"
            "Connection: close\r\n"
            "\r\n",
            status, reason, static_cast<int>(content_type.size()), content_type.data(), body.size(),
            extra_headers);
  if (!head && !body.empty()) mg_write(conn, body.data(), body.size());
}

}  // namespace

int MetricsServer::handle(mg_connection* conn) {
  const mg_request_info* ri = mg_get_request_info(conn);
  auto* self = static_cast<MetricsServer*>(ri->user_data);
  const std::string_view uri = ri->local_uri != nullptr ? ri->local_uri : "";
  const std::string_view method = ri->request_method != nullptr ? ri->request_method : "";
  const bool head = method == "HEAD";
  if (uri != "/metrics") {
    send(conn, 404, "Not Found", "text/plain; charset=utf-8", "not found; try /metrics\n", head);
    return 404;
  }
  if (method != "GET" && !head) {
    send(conn, 405, "Method Not Allowed", "text/plain; charset=utf-8", "method not allowed\n",
         false, "Allow: GET, HEAD\r\n");
    return 405;
  }
  const std::string body = self->registry_.expose();
  send(conn, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, head);
  return 200;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(MetricsRegistry& registry,
                                                            std::string host_port) {
  auto hp = parse_host_port(host_port);
  if (!hp) return std::unexpected(std::move(hp.error()));

  std::unique_ptr<MetricsServer> self(new MetricsServer(registry));
  mg_callbacks callbacks{};
  callbacks.begin_request = &MetricsServer::handle;
  callbacks.log_message = &civetweb_log;
  // Scrapes are rare and small: two threads, no keep-alive, no files served from disk.
  const char* options[] = {
      "listening_ports",    host_port.c_str(), "num_threads", "2", "enable_keep_alive", "no",
      "request_timeout_ms", "10000",           nullptr};
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = self.get();
  init.configuration_options = options;
  char errtext[256] = {};
  unsigned errcode = 0;
  mg_error_data err{};
  err.code = &errcode;
  err.text = errtext;
  err.text_buffer_size = sizeof errtext;

  std::string reason;
  startup_log = &reason;
  self->ctx_ = mg_start2(&init, &err);
  startup_log = nullptr;
  if (self->ctx_ == nullptr) {
    const std::string what = "metrics: cannot listen on " + host_port;
    if (int e = probe_bind_errno(*hp); e != 0) return fail(what, e);
    if (reason.empty()) reason = errtext[0] != '\0' ? errtext : "civetweb failed to start";
    return fail(what + ": " + reason);
  }

  mg_server_port ports[4] = {};
  int n = mg_get_server_ports(self->ctx_, 4, ports);
  if (n < 1 || ports[0].port <= 0)
    return fail("metrics: " + host_port + ": cannot read the bound port back from civetweb");
  self->port_ = ports[0].port;
  self->host_ = hp->host;
  log_info("metrics: serving /metrics on " + hp->host + ":" + std::to_string(self->port_));
  return self;
}

MetricsServer::~MetricsServer() {
  if (ctx_ == nullptr) return;
  // civetweb 1.15's listener thread sits in poll() with a fixed 2 s timeout and checks the stop
  // flag only between polls, so a bare mg_stop() stalls shutdown for up to 2 s. Stop on a helper
  // thread and knock on our own port until it returns: each connection ends the poll early. A
  // knock that lands before the stop flag is set is served as an empty request and closed.
  std::atomic<bool> stopped{false};
  std::thread stopper([this, &stopped] {
    mg_stop(ctx_);
    stopped.store(true, std::memory_order_release);
  });
  while (!stopped.load(std::memory_order_acquire)) {
    poke_listener(host_, port_);
    for (int i = 0; i < 10 && !stopped.load(std::memory_order_acquire); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stopper.join();
}

}  // namespace iovirt
