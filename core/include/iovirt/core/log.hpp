// Minimal leveled logging to stderr for the control path ("iovirt: warn: ..."). The data path
// does not log per packet; it counts (metrics.hpp).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace iovirt {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3 };

// The initial level comes from the environment variable IOVIRT_LOG (debug|info|warn|error),
// read once at first use; unset or unrecognised means info.
void set_log_level(LogLevel level);
[[nodiscard]] LogLevel log_level();
[[nodiscard]] bool log_enabled(LogLevel level);
// "debug" -> Debug, ...; also accepts "warning". nullopt for anything else.
[[nodiscard]] std::optional<LogLevel> parse_log_level(std::string_view s);

// Writes one whole line per call, so lines from different threads never interleave.
void log_message(LogLevel level, std::string_view msg);
inline void log_debug(std::string_view msg) {
  log_message(LogLevel::Debug, msg);
}
inline void log_info(std::string_view msg) {
  log_message(LogLevel::Info, msg);
}
inline void log_warn(std::string_view msg) {
  log_message(LogLevel::Warn, msg);
}
inline void log_error(std::string_view msg) {
  log_message(LogLevel::Error, msg);
}

}  // namespace iovirt
