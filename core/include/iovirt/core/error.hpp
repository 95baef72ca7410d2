// Error values for every fallible operation: what failed (the step, the object) plus errno.
// Results are std::expected; nothing on the data path throws.
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <utility>

namespace iovirt {

class [[nodiscard]] Error final {
 public:
  explicit Error(std::string what, int err = 0) : what_(std::move(what)), errno_(err) {}

  // The failed step, e.g. "KVM_SET_USER_MEMORY_REGION slot 0".
  const std::string& what() const { return what_; }
  // errno at the time of failure, 0 when the error is not a system error.
  int code() const { return errno_; }
  // "what: strerror(code)" or just "what".
  std::string message() const;

  // Prefix an outer step: Error("open").context("load kernel") -> "load kernel: open".
  Error context(const std::string& outer) && {
    what_ = outer + ": " + what_;
    return std::move(*this);
  }

 private:
  std::string what_;
  int errno_;
};

template <class T>
using Result = std::expected<T, Error>;
using Status = std::expected<void, Error>;

// return fail("bad thing");
inline std::unexpected<Error> fail(std::string what, int err = 0) {
  return std::unexpected<Error>(Error(std::move(what), err));
}
// return fail_errno("open " + path);  -- captures errno now.
inline std::unexpected<Error> fail_errno(std::string what) {
  int e = errno;
  return std::unexpected<Error>(Error(std::move(what), e));
}

// Propagate an error with an outer context:  IOVIRT_TRY(x, f(), "ctx");
#define IOVIRT_TRY_CTX(var, expr, ctx)                                              \
  auto var##_r = (expr);                                                           \
  if (!var##_r) return std::unexpected(std::move(var##_r.error()).context(ctx)); \
  auto var = std::move(*var##_r)

// The same for a Status:  IOVIRT_CHECK_CTX(f(), "ctx");
#define IOVIRT_CHECK_CTX(expr, ctx)                                                \
  do {                                                                             \
    auto iovirt_check_st_ = (expr);                                                \
    if (!iovirt_check_st_)                                                         \
      return std::unexpected(std::move(iovirt_check_st_.error()).context(ctx));    \
  } while (0)

}  // namespace iovirt
