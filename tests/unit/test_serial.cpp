// Legacy port-I/O devices driven the way a guest drives them: byte reads and writes at register
// offsets. 16550A UART (PC16550D register set), ACPI hardware-reduced sleep/reset, i8042 reset.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "iovirt/vmm/acpi.hpp"
#include "iovirt/vmm/legacy.hpp"

namespace iovirt {
namespace {

// Register offsets and bits from the data sheet.
constexpr uint64_t kRbrThr = 0, kIer = 1, kIir = 2, kFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5,
                   kMsr = 6, kScr = 7;
constexpr uint64_t kDll = 0, kDlm = 1;  // with LCR.DLAB
constexpr uint8_t kIerRda = 0x01, kIerThre = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirThre = 0x02, kIirRda = 0x04;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kMcrLoop = 0x10;

// A UART plus everything it told the outside world.
class SerialTest : public ::testing::Test {
 protected:
  uint8_t rd(uint64_t reg) {
    uint8_t v = 0xee;
    uart_.read(reg, std::span(&v, 1));
    return v;
  }
  void wr(uint64_t reg, uint8_t v) { uart_.write(reg, std::span<const uint8_t>(&v, 1)); }
  void input(const std::string& s) {
    uart_.enqueue_input(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  }
  bool line() const { return !levels_.empty() && levels_.back(); }

  std::string out_;
  std::vector<bool> levels_;  // every change of the IRQ line, in order
  Serial16550 uart_{[this](bool level) { levels_.push_back(level); },
                    [this](uint8_t b) { out_.push_back(static_cast<char>(b)); }};
};

TEST_F(SerialTest, ThrWritesReachTheOutputInOrder) {
  wr(kRbrThr, 'h');
  wr(kRbrThr, 'i');

  EXPECT_EQ(out_, "hi");
  EXPECT_TRUE(levels_.empty()) << "no interrupt without IER";
}

TEST_F(SerialTest, LsrReportsTransmitterEmptyAndNoData) {
  const uint8_t lsr = rd(kLsr);

  EXPECT_EQ(lsr & (kLsrThre | kLsrTemt), kLsrThre | kLsrTemt);
  EXPECT_EQ(lsr & kLsrDr, 0);
}

TEST_F(SerialTest, ScratchRegisterKeepsItsValue) {
  wr(kScr, 0xa5);

  EXPECT_EQ(rd(kScr), 0xa5);
}

TEST_F(SerialTest, DlabSwitchesOffsetsZeroAndOneToTheDivisorLatch) {
  wr(kIer, kIerRda);
  wr(kLcr, kLcrDlab | 0x03);
  wr(kDll, 0x01);  // 115200 baud
  wr(kDlm, 0x00);

  EXPECT_EQ(rd(kDll), 0x01);
  EXPECT_EQ(rd(kDlm), 0x00);
  EXPECT_EQ(rd(kLcr), kLcrDlab | 0x03);
  EXPECT_TRUE(out_.empty()) << "a divisor write is not a transmitted byte";
  wr(kLcr, 0x03);
  EXPECT_EQ(rd(kIer), kIerRda) << "IER is back, untouched by the DLM write";
  wr(kRbrThr, 'x');
  EXPECT_EQ(out_, "x");
}

TEST_F(SerialTest, EnablingThreInterruptRaisesTheLineAndIirReadClearsIt) {
  wr(kIer, kIerThre);

  ASSERT_TRUE(line()) << "THR is empty, so enabling its interrupt raises the line";
  EXPECT_EQ(rd(kIir) & 0x0f, kIirThre);
  EXPECT_FALSE(line()) << "reading IIR with THRE as the source clears it";
  EXPECT_EQ(rd(kIir) & 0x0f, kIirNone);
  EXPECT_EQ(levels_, (std::vector<bool>{true, false}));
}

TEST_F(SerialTest, EachThrWriteRaisesThreAgainWhileEnabled) {
  wr(kIer, kIerThre);
  (void)rd(kIir);

  wr(kRbrThr, 'a');

  EXPECT_TRUE(line());
  EXPECT_EQ(rd(kIir) & 0x0f, kIirThre);
}

TEST_F(SerialTest, DisablingThreInterruptLowersTheLine) {
  wr(kIer, kIerThre);

  wr(kIer, 0);

  EXPECT_FALSE(line());
  EXPECT_EQ(rd(kIir) & 0x0f, kIirNone);
}

TEST_F(SerialTest, InputSetsDataReadyAndRbrDrainsInOrder) {
  input("ok");

  EXPECT_NE(rd(kLsr) & kLsrDr, 0);
  EXPECT_EQ(rd(kRbrThr), 'o');
  EXPECT_EQ(rd(kRbrThr), 'k');
  EXPECT_EQ(rd(kLsr) & kLsrDr, 0);
  EXPECT_EQ(rd(kRbrThr), 0) << "empty RBR reads 0";
}

TEST_F(SerialTest, InputRaisesRdaInterruptUntilDrained) {
  wr(kIer, kIerRda);
  ASSERT_FALSE(line());

  input("xy");

  EXPECT_TRUE(line());
  EXPECT_EQ(rd(kIir) & 0x0f, kIirRda);
  (void)rd(kRbrThr);
  EXPECT_TRUE(line()) << "one byte still waiting";
  (void)rd(kRbrThr);
  EXPECT_FALSE(line());
  EXPECT_EQ(levels_, (std::vector<bool>{true, false}));
}

TEST_F(SerialTest, InputWithoutRdaEnabledRaisesNothing) {
  input("z");

  EXPECT_TRUE(levels_.empty());
  EXPECT_EQ(rd(kIir) & 0x0f, kIirNone);
}

TEST_F(SerialTest, RdaTakesPriorityOverThreInIir) {
  wr(kIer, kIerRda | kIerThre);
  input("q");

  EXPECT_EQ(rd(kIir) & 0x0f, kIirRda);
  (void)rd(kRbrThr);
  EXPECT_EQ(rd(kIir) & 0x0f, kIirThre) << "THRE was still pending behind RDA";
}

TEST_F(SerialTest, InputBeyondCapacityIsDroppedAndCounted) {
  std::string big(Serial16550::kRxCapacity + 10, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);

  input(big);

  EXPECT_EQ(uart_.overruns(), 10u);
  for (size_t i = 0; i < Serial16550::kRxCapacity; ++i) {
    ASSERT_NE(rd(kLsr) & kLsrDr, 0) << "byte " << i;
    ASSERT_EQ(rd(kRbrThr), static_cast<uint8_t>('a' + i % 26)) << "byte " << i;
  }
  EXPECT_EQ(rd(kLsr) & kLsrDr, 0) << "the 10 extra bytes were not kept";
}

TEST_F(SerialTest, FifoResetDiscardsReceivedBytes) {
  input("abc");

  wr(kFcr, 0x01 | 0x02);  // FIFO enable, clear receive FIFO

  EXPECT_EQ(rd(kLsr) & kLsrDr, 0);
  EXPECT_EQ(rd(kIir) & 0xc0, 0xc0) << "FIFOs enabled shows in IIR bits 7:6";
}

TEST_F(SerialTest, LoopbackEchoesThrIntoRbrInsteadOfTheOutput) {
  wr(kMcr, kMcrLoop);

  wr(kRbrThr, 'L');

  EXPECT_TRUE(out_.empty());
  EXPECT_NE(rd(kLsr) & kLsrDr, 0);
  EXPECT_EQ(rd(kRbrThr), 'L');
}

TEST_F(SerialTest, LoopbackBeyondCapacityIsDroppedAndCounted) {
  wr(kMcr, kMcrLoop);
  for (size_t i = 0; i < Serial16550::kRxCapacity; ++i) wr(kRbrThr, 'x');

  wr(kRbrThr, 'y');

  EXPECT_EQ(uart_.overruns(), 1u);
  EXPECT_EQ(rd(kRbrThr), 'x');
}

TEST_F(SerialTest, LoopbackMirrorsModemControlIntoModemStatus) {
  // DTR -> DSR, RTS -> CTS, OUT1 -> RI, OUT2 -> DCD.
  const std::pair<uint8_t, uint8_t> cases[] = {{0x01, 0x20}, {0x02, 0x10}, {0x04, 0x40},
                                               {0x08, 0x80}, {0x0f, 0xf0}, {0x00, 0x00}};
  for (auto [mcr, msr] : cases) {
    wr(kMcr, kMcrLoop | mcr);

    EXPECT_EQ(rd(kMsr) & 0xf0, msr) << "MCR 0x" << std::hex << unsigned{mcr};
  }
}

TEST_F(SerialTest, WithoutLoopbackModemStatusShowsACarrierAndAReadyPeer) {
  EXPECT_EQ(rd(kMsr) & 0xb0, 0xb0);  // DCD, DSR, CTS
}

TEST_F(SerialTest, AccessesWiderThanAByteAreIgnored) {
  uint8_t two[2] = {'a', 'b'};
  uart_.write(kRbrThr, two);
  uart_.write(kScr, two);
  uint8_t back[2] = {0xff, 0xff};
  uart_.read(kLsr, back);

  EXPECT_TRUE(out_.empty());
  EXPECT_EQ(rd(kScr), 0);
  EXPECT_EQ(back[0], 0);
  EXPECT_EQ(back[1], 0);
}

// ---- ACPI PM registers ----------------------------------------------------------------------

struct PmCalls {
  int poweroff = 0;
  int reset = 0;
};

void pm_write(AcpiPmDevice& d, uint64_t off, uint8_t v) {
  d.write(off, std::span<const uint8_t>(&v, 1));
}

TEST(AcpiPmDevice, SlpEnWithS5TypePowersOff) {
  PmCalls c;
  AcpiPmDevice pm([&] { ++c.poweroff; }, [&] { ++c.reset; });

  pm_write(pm, 0, 0x34);  // SLP_EN (bit 5) | SLP_TYP 5 (bits 4:2)

  EXPECT_EQ(c.poweroff, 1);
  EXPECT_EQ(c.reset, 0);
}

TEST(AcpiPmDevice, ResetValueAtTheResetRegisterResets) {
  PmCalls c;
  AcpiPmDevice pm([&] { ++c.poweroff; }, [&] { ++c.reset; });

  pm_write(pm, 2, kAcpiResetValue);

  EXPECT_EQ(c.reset, 1);
  EXPECT_EQ(c.poweroff, 0);
}

TEST(AcpiPmDevice, OtherWritesDoNothing) {
  PmCalls c;
  AcpiPmDevice pm([&] { ++c.poweroff; }, [&] { ++c.reset; });

  pm_write(pm, 0, 0x14);             // S5 type without SLP_EN
  pm_write(pm, 0, 0x20 | (3 << 2));  // SLP_EN with S3
  pm_write(pm, 0, 0x20);             // SLP_EN with S0
  pm_write(pm, 1, 0x34);             // the status register
  pm_write(pm, 2, 0x02);             // not the reset value
  pm_write(pm, 0, kAcpiResetValue);  // the reset value at the wrong register
  const uint8_t wide[2] = {0x34, 0x00};
  pm.write(0, wide);  // a 16-bit access

  EXPECT_EQ(c.poweroff, 0);
  EXPECT_EQ(c.reset, 0);
}

TEST(AcpiPmDevice, SleepStatusReadsZero) {
  AcpiPmDevice pm([] {}, [] {});
  uint8_t v = 0xff;

  pm.read(1, std::span(&v, 1));

  EXPECT_EQ(v, 0);
}

// ---- i8042 ----------------------------------------------------------------------------------

TEST(I8042, CommandFeOnTheCommandPortResets) {
  int resets = 0;
  I8042 kbd([&] { ++resets; });
  const uint8_t cmd = 0xfe;

  kbd.write(4, std::span(&cmd, 1));

  EXPECT_EQ(resets, 1);
}

TEST(I8042, OtherCommandsAndTheDataPortDoNotReset) {
  int resets = 0;
  I8042 kbd([&] { ++resets; });
  const uint8_t fe = 0xfe, d1 = 0xd1;

  kbd.write(0, std::span(&fe, 1));  // 0xfe to the data port
  kbd.write(4, std::span(&d1, 1));  // write-output-port command

  EXPECT_EQ(resets, 0);
}

TEST(I8042, StatusReadsBothBuffersEmptyWithTheSystemFlag) {
  I8042 kbd([] {});
  uint8_t v = 0xff;

  kbd.read(4, std::span(&v, 1));

  EXPECT_EQ(v, 0x04);
}

}  // namespace
}  // namespace iovirt
