#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "iovirt/core/event_loop.hpp"
#include "iovirt/core/eventfd.hpp"

namespace iovirt {
namespace {

EventFd make_eventfd() {
  auto e = EventFd::create();
  EXPECT_TRUE(e.has_value());
  return std::move(*e);
}

EventLoop make_loop() {
  auto l = EventLoop::create();
  EXPECT_TRUE(l.has_value());
  return std::move(*l);
}

TEST(EventFd, ReadReturnsSumOfWritesAndResets) {
  auto e = make_eventfd();

  ASSERT_TRUE(e.write(2).has_value());
  ASSERT_TRUE(e.write(3).has_value());
  auto first = e.read();
  auto second = e.read();

  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(*first, 5u);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(*second, 0u);  // nothing pending on a non-blocking eventfd
}

TEST(EventFd, WriteThatWouldOverflowCounterFails) {
  auto e = make_eventfd();
  ASSERT_TRUE(e.write(0xfffffffffffffffeull).has_value());

  auto s = e.write(1);

  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), EAGAIN);
}

TEST(EventLoop, CallbackFiresForSignalledEventFd) {
  auto loop = make_loop();
  auto e = make_eventfd();
  uint64_t seen = 0;
  uint32_t seen_events = 0;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN,
                       [&](uint32_t ev) {
                         seen_events = ev;
                         seen += *e.read();
                       })
                  .has_value());
  ASSERT_TRUE(e.write(7).has_value());

  auto n = loop.run_once(-1);

  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1);
  EXPECT_EQ(seen, 7u);
  EXPECT_TRUE(seen_events & EPOLLIN);
}

TEST(EventLoop, RunOnceWithNothingReadyDispatchesNothing) {
  auto loop = make_loop();
  auto e = make_eventfd();
  bool fired = false;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN, [&](uint32_t) { fired = true; }).has_value());

  auto n = loop.run_once(0);

  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0);
  EXPECT_FALSE(fired);
}

TEST(EventLoop, AddingSameFdTwiceFails) {
  auto loop = make_loop();
  auto e = make_eventfd();
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN, [](uint32_t) {}).has_value());

  auto s = loop.add(e.fd(), EPOLLIN, [](uint32_t) {});

  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), EEXIST);
}

TEST(EventLoop, RemovingUnknownFdFails) {
  auto loop = make_loop();

  EXPECT_FALSE(loop.remove(12345).has_value());
}

TEST(EventLoop, RemovedFdNoLongerFires) {
  auto loop = make_loop();
  auto e = make_eventfd();
  int calls = 0;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN, [&](uint32_t) { ++calls; }).has_value());
  ASSERT_TRUE(loop.remove(e.fd()).has_value());
  ASSERT_TRUE(e.write().has_value());

  auto n = loop.run_once(0);

  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 0);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(loop.size(), 0u);
}

TEST(EventLoop, CallbackMayRemoveItsOwnFd) {
  auto loop = make_loop();
  auto e = make_eventfd();
  int calls = 0;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN,
                       [&, fd = e.fd()](uint32_t) {
                         ++calls;
                         // Captured state must still be alive after the removal below.
                         EXPECT_TRUE(loop.remove(fd).has_value());
                         EXPECT_EQ(fd, e.fd());
                       })
                  .has_value());
  ASSERT_TRUE(e.write().has_value());

  ASSERT_TRUE(loop.run_once(-1).has_value());
  auto again = loop.run_once(0);  // still signalled (never read), but no longer watched

  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*again, 0);
  EXPECT_EQ(calls, 1);
}

TEST(EventLoop, CallbackRemovingAnotherReadyFdSuppressesItsPendingEvent) {
  auto loop = make_loop();
  auto a = make_eventfd();
  auto b = make_eventfd();
  int fired = 0;
  // Whichever runs first removes the other, so exactly one of them runs in this batch.
  ASSERT_TRUE(loop.add(a.fd(), EPOLLIN,
                       [&](uint32_t) {
                         ++fired;
                         ASSERT_TRUE(loop.remove(b.fd()).has_value());
                       })
                  .has_value());
  ASSERT_TRUE(loop.add(b.fd(), EPOLLIN,
                       [&](uint32_t) {
                         ++fired;
                         ASSERT_TRUE(loop.remove(a.fd()).has_value());
                       })
                  .has_value());
  ASSERT_TRUE(a.write().has_value());
  ASSERT_TRUE(b.write().has_value());

  auto n = loop.run_once(-1);

  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1);
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(loop.size(), 1u);
}

TEST(EventLoop, CallbackMayReAddFdItRemoved) {
  auto loop = make_loop();
  auto e = make_eventfd();
  int first = 0;
  int second = 0;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN,
                       [&](uint32_t) {
                         ++first;
                         ASSERT_TRUE(loop.remove(e.fd()).has_value());
                         ASSERT_TRUE(loop.add(e.fd(), EPOLLIN,
                                              [&](uint32_t) {
                                                ++second;
                                                (void)e.read();
                                              })
                                         .has_value());
                       })
                  .has_value());
  ASSERT_TRUE(e.write().has_value());

  ASSERT_TRUE(loop.run_once(-1).has_value());
  ASSERT_TRUE(loop.run_once(-1).has_value());

  EXPECT_EQ(first, 1);
  EXPECT_EQ(second, 1);
}

TEST(EventLoop, StopFromCallbackEndsRun) {
  auto loop = make_loop();
  auto e = make_eventfd();
  int calls = 0;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN,
                       [&](uint32_t) {
                         ++calls;
                         (void)e.read();
                         loop.stop();
                       })
                  .has_value());
  ASSERT_TRUE(e.write().has_value());

  auto s = loop.run();

  EXPECT_TRUE(s.has_value());
  EXPECT_EQ(calls, 1);
}

TEST(EventLoop, StopFromAnotherThreadEndsRun) {
  auto loop = make_loop();
  auto started = make_eventfd();
  bool loop_running = false;
  // The other thread stops the loop only once it has seen the loop dispatch, so the stop
  // really arrives while run() is blocked in epoll_wait.
  ASSERT_TRUE(loop.add(started.fd(), EPOLLIN,
                       [&](uint32_t) {
                         (void)started.read();
                         loop_running = true;
                       })
                  .has_value());
  auto ack = make_eventfd();
  auto ack_blocking = EventFd::create(EFD_CLOEXEC);
  ASSERT_TRUE(ack_blocking.has_value());
  ASSERT_TRUE(loop.add(ack.fd(), EPOLLIN,
                       [&](uint32_t) {
                         (void)ack.read();
                         ASSERT_TRUE(ack_blocking->write().has_value());
                       })
                  .has_value());

  std::thread stopper([&] {
    ASSERT_TRUE(started.write().has_value());
    ASSERT_TRUE(ack.write().has_value());
    ASSERT_TRUE(ack_blocking->read().has_value());  // blocks until the loop ran both callbacks
    loop.stop();
  });
  auto s = loop.run();
  stopper.join();

  EXPECT_TRUE(s.has_value());
  EXPECT_TRUE(loop_running);
}

TEST(EventLoop, StopBeforeRunMakesRunReturnAndLoopIsReusable) {
  auto loop = make_loop();
  loop.stop();

  EXPECT_TRUE(loop.run().has_value());

  auto e = make_eventfd();
  int calls = 0;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN,
                       [&](uint32_t) {
                         ++calls;
                         (void)e.read();
                       })
                  .has_value());
  ASSERT_TRUE(e.write().has_value());
  auto n = loop.run_once(-1);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1);
}

TEST(EventLoop, NestedRunOnceFromCallbackIsRefused) {
  auto loop = make_loop();
  auto e = make_eventfd();
  bool refused = false;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN,
                       [&](uint32_t) {
                         (void)e.read();
                         refused = !loop.run_once(0).has_value();
                       })
                  .has_value());
  ASSERT_TRUE(e.write().has_value());

  ASSERT_TRUE(loop.run_once(-1).has_value());

  EXPECT_TRUE(refused);
}

TEST(EventLoop, ModifyChangesWatchedEvents) {
  auto loop = make_loop();
  auto e = make_eventfd();
  uint32_t seen = 0;
  ASSERT_TRUE(loop.add(e.fd(), EPOLLIN, [&](uint32_t ev) { seen = ev; }).has_value());

  ASSERT_TRUE(loop.modify(e.fd(), EPOLLOUT).has_value());
  auto n = loop.run_once(-1);  // an eventfd below its maximum is always writable

  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 1);
  EXPECT_TRUE(seen & EPOLLOUT);
  EXPECT_FALSE(seen & EPOLLIN);
}

}  // namespace
}  // namespace iovirt
