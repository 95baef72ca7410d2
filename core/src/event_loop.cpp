#include "iovirt/core/event_loop.hpp"

#include <string>

namespace iovirt {

namespace {
std::string fd_name(int fd) {
  return "fd " + std::to_string(fd);
}
}  // namespace

Result<EventLoop> EventLoop::create() {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return fail_errno("epoll_create1");
  Fd epfd(ep);
  IOVIRT_TRY_CTX(wake, EventFd::create(), "event loop wake eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  if (::epoll_ctl(epfd.get(), EPOLL_CTL_ADD, wake.fd(), &ev) < 0)
    return fail_errno("epoll_ctl ADD wake eventfd");
  return EventLoop(std::move(epfd), std::move(wake));
}

EventLoop::EventLoop(EventLoop&& o) noexcept
    : epfd_(std::move(o.epfd_)),
      wake_(std::move(o.wake_)),
      stop_(o.stop_.load()),
      handlers_(std::move(o.handlers_)),
      retired_(std::move(o.retired_)),
      dispatching_(o.dispatching_) {}

EventLoop& EventLoop::operator=(EventLoop&& o) noexcept {
  if (this != &o) {
    epfd_ = std::move(o.epfd_);
    wake_ = std::move(o.wake_);
    stop_.store(o.stop_.load());
    handlers_ = std::move(o.handlers_);
    retired_ = std::move(o.retired_);
    dispatching_ = o.dispatching_;
  }
  return *this;
}

Status EventLoop::add(int fd, uint32_t events, Callback cb) {
  if (!cb) return fail("event loop add " + fd_name(fd) + ": empty callback");
  if (handlers_.contains(fd))
    return fail("event loop add " + fd_name(fd) + ": already watched", EEXIST);
  auto h = std::make_unique<Handler>(Handler{fd, false, std::move(cb)});
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h.get();
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, fd, &ev) < 0)
    return fail_errno("epoll_ctl ADD " + fd_name(fd));
  handlers_.emplace(fd, std::move(h));
  return {};
}

Status EventLoop::modify(int fd, uint32_t events) {
  auto it = handlers_.find(fd);
  if (it == handlers_.end())
    return fail("event loop modify " + fd_name(fd) + ": not watched", ENOENT);
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = it->second.get();
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_MOD, fd, &ev) < 0)
    return fail_errno("epoll_ctl MOD " + fd_name(fd));
  return {};
}

Status EventLoop::remove(int fd) {
  auto it = handlers_.find(fd);
  if (it == handlers_.end())
    return fail("event loop remove " + fd_name(fd) + ": not watched", ENOENT);
  std::unique_ptr<Handler> h = std::move(it->second);
  handlers_.erase(it);
  h->removed = true;
  // The callback being removed may be the one running right now; keep it alive until the batch
  // is over. Outside a batch this is freed on the next run_once.
  retired_.push_back(std::move(h));
  // EBADF: the caller closed the fd first, which already dropped it from the epoll set.
  if (::epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, fd, nullptr) < 0 && errno != EBADF)
    return fail_errno("epoll_ctl DEL " + fd_name(fd));
  return {};
}

Result<int> EventLoop::run_once(int timeout_ms) {
  // A nested run_once would free handlers the outer batch still points at.
  if (dispatching_) return fail("event loop run_once: called from inside a callback", EDEADLK);
  retired_.clear();
  int n;
  do {
    n = ::epoll_wait(epfd_.get(), events_.data(), static_cast<int>(events_.size()), timeout_ms);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return fail_errno("epoll_wait");

  // Freed on every exit, including a callback that throws.
  struct EndBatch {
    EventLoop& loop;
    ~EndBatch() {
      loop.dispatching_ = false;
      loop.retired_.clear();
    }
  } guard{*this};
  dispatching_ = true;

  int dispatched = 0;
  for (int i = 0; i < n; ++i) {
    auto* h = static_cast<Handler*>(events_[static_cast<size_t>(i)].data.ptr);
    if (h == nullptr) {
      // Only drains the doorbell: stop() is observed through stop_ by run().
      (void)wake_.read();
      continue;
    }
    if (h->removed) continue;
    h->cb(events_[static_cast<size_t>(i)].events);
    ++dispatched;
  }
  return dispatched;
}

Status EventLoop::run() {
  while (!stop_.exchange(false, std::memory_order_acq_rel)) {
    auto r = run_once(-1);
    if (!r) return std::unexpected(std::move(r.error()).context("event loop run"));
  }
  return {};
}

void EventLoop::stop() {
  stop_.store(true, std::memory_order_release);
  // The only failure is a saturated counter, which still leaves epoll_wait woken.
  (void)wake_.write(1);
}

}  // namespace iovirt
