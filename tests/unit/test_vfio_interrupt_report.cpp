// vfio/interrupt_report.hpp: posted-interrupt facts from a fake sysfs, per-vector host counts
// from sample /proc/interrupts text.
#include <gtest/gtest.h>

#include <string>

#include "iovirt/vfio/interrupt_report.hpp"
#include "vfio_fake_sysfs.hpp"

namespace iovirt::vfio {
namespace {

using testing::VfioFakeTree;

TEST(VfioInterruptReport, IntelWithApicvAndVtdPosting) {
  VfioFakeTree t;
  t.put_sys("module/kvm_intel/parameters/enable_apicv", "Y");
  // cap with bit 59 (PI) set, ecap with bit 3 (IR) set: values as a Skylake-SP dmar prints.
  t.put_sys("class/iommu/dmar0/intel-iommu/cap", "8d2078c106f0466");
  t.put_sys("class/iommu/dmar0/intel-iommu/ecap", "f020df");
  t.put_sys("class/iommu/dmar1/intel-iommu/cap", "0x8d2078c106f0466");
  t.put_sys("class/iommu/dmar1/intel-iommu/ecap", "f020df");
  auto p = detect_posted_interrupts(Sysfs(t.sys()));
  EXPECT_EQ(p.cpu_vendor, "intel");
  EXPECT_EQ(p.cpu_posting, Tri::Yes);
  EXPECT_EQ(p.iommu_remapping, Tri::Yes);
  EXPECT_EQ(p.iommu_posting, Tri::Yes);
  EXPECT_NE(p.summary.find("APICv yes"), std::string::npos) << p.summary;
  EXPECT_NE(p.summary.find("bypass the host"), std::string::npos) << p.summary;
}

TEST(VfioInterruptReport, OneUnitWithoutPiMakesPostingNo) {
  VfioFakeTree t;
  t.put_sys("module/kvm_intel/parameters/enable_apicv", "Y");
  t.put_sys("class/iommu/dmar0/intel-iommu/cap", "8d2078c106f0466");
  t.put_sys("class/iommu/dmar0/intel-iommu/ecap", "f020df");
  t.put_sys("class/iommu/dmar1/intel-iommu/cap", "d2008c40660462");  // bit 59 clear
  t.put_sys("class/iommu/dmar1/intel-iommu/ecap", "f050da");
  auto p = detect_posted_interrupts(Sysfs(t.sys()));
  EXPECT_EQ(p.iommu_posting, Tri::No);
  EXPECT_NE(p.summary.find("host vector"), std::string::npos) << p.summary;
}

TEST(VfioInterruptReport, AmdAvicOffAndGaSupport) {
  VfioFakeTree t;
  t.put_sys("module/kvm_amd/parameters/avic", "0");
  t.put_sys("class/iommu/ivhd0/amd-iommu/features", "58f77ef22294ade:0");  // bit 7 set
  auto p = detect_posted_interrupts(Sysfs(t.sys()));
  EXPECT_EQ(p.cpu_vendor, "amd");
  EXPECT_EQ(p.cpu_posting, Tri::No);
  EXPECT_EQ(p.iommu_posting, Tri::Yes);
  EXPECT_NE(p.summary.find("AVIC no"), std::string::npos) << p.summary;

  VfioFakeTree t2;
  t2.put_sys("module/kvm_amd/parameters/avic", "1");
  t2.put_sys("class/iommu/ivhd0/amd-iommu/features", "0x5");  // no GASup
  auto q = detect_posted_interrupts(Sysfs(t2.sys()));
  EXPECT_EQ(q.cpu_posting, Tri::Yes);
  EXPECT_EQ(q.iommu_posting, Tri::No);
}

TEST(VfioInterruptReport, NothingKnownIsUnknown) {
  VfioFakeTree t;
  t.put_sys("class/iommu/dmar0/intel-iommu/cap", "garbage");
  auto p = detect_posted_interrupts(Sysfs(t.sys()));
  EXPECT_EQ(p.cpu_vendor, "unknown");
  EXPECT_EQ(p.cpu_posting, Tri::Unknown);
  EXPECT_EQ(p.iommu_posting, Tri::Unknown);
  EXPECT_NE(p.summary.find("unknown"), std::string::npos) << p.summary;
}

constexpr const char* kProcInterrupts =
    "            CPU0       CPU1       CPU2       CPU3       \n"
    "   0:         38          0          0          0  IR-IO-APIC    2-edge      timer\n"
    "  16:          0          0          5          0  IR-IO-APIC   16-fasteoi   vfio-intx(0000:03:00.0)\n"
    " 130:         10         20         30         40  IR-PCI-MSIX-0000:02:00.0    0-edge      vfio-msix[0](0000:02:00.0)\n"
    " 131:          0          7          0          0  IR-PCI-MSIX-0000:02:00.0    1-edge      vfio-msix[1](0000:02:00.0)\n"
    " 132:          1          1          1          1  IR-PCI-MSIX-0000:02:00.1    0-edge      vfio-msix[0](0000:02:00.1)\n"
    " 140:          2          0          0          0  IR-PCI-MSI-0000:02:00.0    0-edge      vfio-msi[0](0000:02:00.0)\n"
    " NMI:          0          0          0          0   Non-maskable interrupts\n"
    " ERR:          0\n"
    " MIS:          0\n";

TEST(VfioInterruptReport, HostVectorCountsForOneDevice) {
  auto r = host_vector_interrupts(kProcInterrupts, "0000:02:00.0");
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ(r->at("vfio-msix[0]"), 100u);
  EXPECT_EQ(r->at("vfio-msix[1]"), 7u);
  EXPECT_EQ(r->at("vfio-msi[0]"), 2u);

  auto intx = host_vector_interrupts(kProcInterrupts, "0000:03:00.0");
  ASSERT_TRUE(intx);
  ASSERT_EQ(intx->size(), 1u);
  EXPECT_EQ(intx->at("vfio-intx"), 5u);

  auto none = host_vector_interrupts(kProcInterrupts, "0000:09:00.0");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(VfioInterruptReport, MalformedTextIsRefusedAndOddLinesAreSafe) {
  EXPECT_FALSE(host_vector_interrupts("", "0000:02:00.0"));
  EXPECT_FALSE(host_vector_interrupts("garbage line\n", "0000:02:00.0"));
  // More counts than CPUs, non-numbers, huge numbers: never more than ncpus columns are summed,
  // parsing stops at the first non-number, sums saturate.
  const std::string text =
      "CPU0 CPU1\n"
      " 1: 5 x 99 vfio-msix[0](0000:02:00.0)\n"
      " 2: 18446744073709551615 18446744073709551615 vfio-msix[1](0000:02:00.0)\n"
      " 3: 1 2 3 4 vfio-msix[2](0000:02:00.0)\n"
      "vfio-msix[3](0000:02:00.0)\n";
  auto r = host_vector_interrupts(text, "0000:02:00.0");
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->at("vfio-msix[0]"), 5u);
  EXPECT_EQ(r->at("vfio-msix[1]"), UINT64_MAX);
  EXPECT_EQ(r->at("vfio-msix[2]"), 3u);
  EXPECT_EQ(r->count("vfio-msix[3]"), 0u);
}

}  // namespace
}  // namespace iovirt::vfio
