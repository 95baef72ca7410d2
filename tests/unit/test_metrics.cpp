#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/metrics.hpp"

namespace iovirt {
namespace {

TEST(Metrics, CounterWithLabelsExposesExactText) {
  MetricsRegistry reg;
  Counter& c =
      reg.counter("iovirt_exits_total", "vCPU exits by reason", {{"vcpu", "0"}, {"reason", "io"}});

  c.inc();
  c.inc(41);

  EXPECT_EQ(reg.expose(),
            "# HELP iovirt_exits_total vCPU exits by reason\n"
            "# TYPE iovirt_exits_total counter\n"
            "iovirt_exits_total{reason=\"io\",vcpu=\"0\"} 42\n");
}

TEST(Metrics, SeriesOfOneFamilyShareHelpAndTypeLines) {
  MetricsRegistry reg;
  reg.counter("rx_packets_total", "packets", {{"queue", "0"}}).inc(1);
  reg.counter("rx_packets_total", "packets", {{"queue", "1"}}).inc(2);

  EXPECT_EQ(reg.expose(),
            "# HELP rx_packets_total packets\n"
            "# TYPE rx_packets_total counter\n"
            "rx_packets_total{queue=\"0\"} 1\n"
            "rx_packets_total{queue=\"1\"} 2\n");
}

TEST(Metrics, GaugeExposesSignedValueWithoutLabels) {
  MetricsRegistry reg;
  Gauge& g = reg.gauge("iovirt_ring_fill", "descriptors in flight");

  g.set(10);
  g.add(-15);

  EXPECT_EQ(g.value(), -5);
  EXPECT_EQ(reg.expose(),
            "# HELP iovirt_ring_fill descriptors in flight\n"
            "# TYPE iovirt_ring_fill gauge\n"
            "iovirt_ring_fill -5\n");
}

TEST(Metrics, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  MetricsRegistry reg;
  // Binary fractions, so the sum is exact and its text is predictable.
  Histogram& h =
      reg.histogram("irq_latency_seconds", "irq latency", {0.25, 1, 4}, {{"dev", "net0"}});

  h.observe(0.125);
  h.observe(0.25);  // on the bound: counts in le="0.25"
  h.observe(2);
  h.observe(8);

  EXPECT_EQ(reg.expose(),
            "# HELP irq_latency_seconds irq latency\n"
            "# TYPE irq_latency_seconds histogram\n"
            "irq_latency_seconds_bucket{dev=\"net0\",le=\"0.25\"} 2\n"
            "irq_latency_seconds_bucket{dev=\"net0\",le=\"1\"} 2\n"
            "irq_latency_seconds_bucket{dev=\"net0\",le=\"4\"} 3\n"
            "irq_latency_seconds_bucket{dev=\"net0\",le=\"+Inf\"} 4\n"
            "irq_latency_seconds_sum{dev=\"net0\"} 10.375\n"
            "irq_latency_seconds_count{dev=\"net0\"} 4\n");
}

TEST(Metrics, HistogramBoundsPrintInShortestForm) {
  MetricsRegistry reg;
  reg.histogram("h_seconds", "", {0.001, 0.1, 2.5});

  const std::string text = reg.expose();

  EXPECT_NE(text.find("h_seconds_bucket{le=\"0.001\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"0.1\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("h_seconds_bucket{le=\"2.5\"} 0\n"), std::string::npos) << text;
}

TEST(Metrics, HistogramWithoutLabelsAndIntegerBounds) {
  MetricsRegistry reg;
  Histogram& h =
      reg.histogram("batch_size", "", {1, 8, 64, std::numeric_limits<double>::infinity()});

  h.observe(3);
  h.observe(100);

  EXPECT_EQ(h.count(), 2u);
  EXPECT_EQ(reg.expose(),
            "# TYPE batch_size histogram\n"
            "batch_size_bucket{le=\"1\"} 0\n"
            "batch_size_bucket{le=\"8\"} 1\n"
            "batch_size_bucket{le=\"64\"} 1\n"
            "batch_size_bucket{le=\"+Inf\"} 2\n"
            "batch_size_sum 103\n"
            "batch_size_count 2\n");
}

TEST(Metrics, HistogramNanObservationGoesToInfBucket) {
  Histogram h({1.0});

  h.observe(std::nan(""));

  EXPECT_EQ(h.bucket_count(0), 0u);
  EXPECT_EQ(h.bucket_count(1), 1u);
  EXPECT_TRUE(std::isnan(h.sum()));
}

TEST(Metrics, LabelValuesAreEscaped) {
  MetricsRegistry reg;
  reg.gauge("g", "h", {{"path", "C:\\dir \"x\"\nnext"}}).set(1);

  EXPECT_EQ(reg.expose(),
            "# HELP g h\n"
            "# TYPE g gauge\n"
            "g{path=\"C:\\\\dir \\\"x\\\"\\nnext\"} 1\n");
}

TEST(Metrics, HelpIsEscapedButQuotesAreKept) {
  MetricsRegistry reg;
  reg.counter("c", "a \\ b\nc \"d\"");

  EXPECT_EQ(reg.expose(),
            "# HELP c a \\\\ b\\nc \"d\"\n"
            "# TYPE c counter\n"
            "c 0\n");
}

TEST(Metrics, SameNameAndLabelsReturnSameHandle) {
  MetricsRegistry reg;
  Counter& a = reg.counter("c_total", "h", {{"a", "1"}, {"b", "2"}});
  reg.counter("other_total", "h");  // registrations in between must not move `a`

  Counter& b = reg.counter("c_total", "h", {{"b", "2"}, {"a", "1"}});
  Counter& other = reg.counter("c_total", "h", {{"a", "1"}, {"b", "3"}});

  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &other);
}

TEST(Metrics, InvalidMetricNamesThrow) {
  MetricsRegistry reg;

  EXPECT_THROW(reg.counter("", "h"), std::invalid_argument);
  EXPECT_THROW(reg.counter("1abc", "h"), std::invalid_argument);
  EXPECT_THROW(reg.counter("a-b", "h"), std::invalid_argument);
  EXPECT_THROW(reg.gauge("a b", "h"), std::invalid_argument);
  EXPECT_NO_THROW(reg.counter("ns:sub_name_total", "h"));
  EXPECT_NO_THROW(reg.counter("_x9", "h"));
}

TEST(Metrics, InvalidLabelNamesThrow) {
  MetricsRegistry reg;

  EXPECT_THROW(reg.counter("c", "h", {{"a:b", "v"}}), std::invalid_argument);
  EXPECT_THROW(reg.counter("c", "h", {{"9a", "v"}}), std::invalid_argument);
  EXPECT_THROW(reg.counter("c", "h", {{"", "v"}}), std::invalid_argument);
  EXPECT_THROW(reg.counter("c", "h", {{"__name__", "v"}}), std::invalid_argument);
  EXPECT_THROW(reg.counter("c", "h", {{"a", "1"}, {"a", "2"}}), std::invalid_argument);
  EXPECT_THROW(reg.histogram("hst", "h", {1.0}, {{"le", "1"}}), std::invalid_argument);
}

TEST(Metrics, ReusingNameWithAnotherTypeThrows) {
  MetricsRegistry reg;
  reg.counter("x", "h");

  EXPECT_THROW(reg.gauge("x", "h"), std::invalid_argument);
  EXPECT_THROW(reg.histogram("x", "h", {1.0}), std::invalid_argument);
}

TEST(Metrics, HistogramBoundsMustBeIncreasingAndConsistent) {
  MetricsRegistry reg;
  reg.histogram("lat", "h", {1.0, 2.0});

  EXPECT_THROW(reg.histogram("bad", "h", {2.0, 1.0}), std::invalid_argument);
  EXPECT_THROW(reg.histogram("bad2", "h", {1.0, 1.0}), std::invalid_argument);
  EXPECT_THROW(reg.histogram("bad3", "h", {std::nan("")}), std::invalid_argument);
  EXPECT_THROW(reg.histogram("lat", "h", {1.0, 3.0}, {{"q", "1"}}), std::invalid_argument);
  EXPECT_NO_THROW(reg.histogram("lat", "h", {1.0, 2.0}, {{"q", "1"}}));
}

TEST(Metrics, ConcurrentIncrementsAreAllCounted) {
  MetricsRegistry reg;
  Counter& c = reg.counter("c_total", "h");
  std::vector<std::thread> threads;

  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&c] {
      for (int i = 0; i < 10000; ++i) c.inc();
    });
  for (auto& t : threads) t.join();

  EXPECT_EQ(c.value(), 40000u);
}

}  // namespace
}  // namespace iovirt
