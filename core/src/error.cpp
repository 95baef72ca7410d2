#include "iovirt/core/error.hpp"

#include <cstring>

namespace iovirt {

std::string Error::message() const {
  if (errno_ == 0) return what_;
  return what_ + ": " + std::strerror(errno_);
}

}  // namespace iovirt
