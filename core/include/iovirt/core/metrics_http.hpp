// Serves a MetricsRegistry as GET /metrics (Prometheus text format 0.0.4) over HTTP, on
// civetweb's own threads; everything else is 404. Stops in the destructor.
#pragma once

#include <memory>
#include <string>

#include "iovirt/core/error.hpp"
#include "iovirt/core/metrics.hpp"

struct mg_context;
struct mg_connection;

namespace iovirt {

class MetricsServer final {
 public:
  // host_port is "HOST:PORT" ("127.0.0.1:9100", "0.0.0.0:9100", "[::1]:9100"); port 0 picks a
  // free port, see port(). Returned by pointer because civetweb's threads hold `this`.
  // The registry must outlive the server.
  [[nodiscard]] static Result<std::unique_ptr<MetricsServer>> start(MetricsRegistry& registry,
                                                                    std::string host_port);
  // Joins civetweb's threads; no handler runs after this returns.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port actually bound (the chosen one when started with port 0).
  [[nodiscard]] int port() const { return port_; }

 private:
  explicit MetricsServer(MetricsRegistry& registry) : registry_(registry) {}
  static int handle(mg_connection* conn);  // civetweb begin_request callback

  MetricsRegistry& registry_;
  mg_context* ctx_ = nullptr;
  std::string host_;  // as given, without [IPv6] brackets; used to wake the listener on stop
  int port_ = 0;
};

}  // namespace iovirt
