#include "iovirt/core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <mutex>

namespace iovirt {

namespace {

LogLevel level_from_env() {
  const char* env = std::getenv("IOVIRT_LOG");
  if (env == nullptr) return LogLevel::Info;
  return parse_log_level(env).value_or(LogLevel::Info);
}

// Process-wide by nature (stderr is); the one piece of global state, and it is only a level.
std::atomic<LogLevel>& level_ref() {
  static std::atomic<LogLevel> level{level_from_env()};
  return level;
}

const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
  }
  return "?";
}

std::mutex& write_mutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

void set_log_level(LogLevel level) {
  level_ref().store(level, std::memory_order_relaxed);
}

LogLevel log_level() {
  return level_ref().load(std::memory_order_relaxed);
}

bool log_enabled(LogLevel level) {
  return level >= log_level();
}

std::optional<LogLevel> parse_log_level(std::string_view s) {
  if (s == "debug") return LogLevel::Debug;
  if (s == "info") return LogLevel::Info;
  if (s == "warn" || s == "warning") return LogLevel::Warn;
  if (s == "error") return LogLevel::Error;
  return std::nullopt;
}

void log_message(LogLevel level, std::string_view msg) {
  if (!log_enabled(level)) return;
  std::string line;
  line.reserve(msg.size() + 16);
  line.append("iovirt: ").append(level_name(level)).append(": ").append(msg).push_back('\n');
  // One write(2) per line under a lock: stdio buffering could split a line between threads.
  std::lock_guard lock(write_mutex());
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // nowhere left to report a failure to log
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace iovirt
