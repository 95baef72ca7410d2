// SPDX-License-Identifier: GPL-2.0
/*
 * iovirt_edu: the L2 guest's test driver for QEMU's "edu" educational PCI device, passed through
 * from L1 by the VMM under test (the lab's vfio-edu scenario). It checks, from inside the guest,
 * what a passthrough VMM must get right:
 *   - BAR0 mapped into guest memory: identification and liveness registers, the factorial unit;
 *   - interrupts reaching the guest: every step that raises an interrupt waits for it. MSI by
 *     default; with the module parameter intx=1 the legacy INTx line instead (edu raises INTx
 *     when MSI is off), which exercises the VMM's _PRT routing and the level-triggered
 *     irqfd + resamplefd path (the handler's acknowledge at 0x64 deasserts the line);
 *   - DMA between the device and guest RAM, both ways, through L1's IOMMU (which the VMM programs
 *     with the guest's memory at iova = guest physical address), with the bytes compared.
 * A kernel module rather than a userspace program: Debian's kernel has no VFIO no-IOMMU mode, and
 * userspace cannot take an interrupt or get DMA-able memory without a driver.
 *
 * Results go to the kernel log as "IOVIRT-RESULT key=value" lines, then "IOVIRT-EDU-OK" or
 * "IOVIRT-EDU-FAIL: reason"; probe fails on a failure. l2-init prints them on the console.
 *
 * edu register map (QEMU docs/specs/edu.rst): 0x00 identification 0x010000ed, 0x04 liveness
 * (reads back the bitwise inverse), 0x08 factorial, 0x20 status (bit 0 computing, bit 7 raise an
 * interrupt after a factorial), 0x24 interrupt status, 0x60 raise, 0x64 acknowledge, 0x80/0x88/
 * 0x90/0x98 DMA source, destination, count, command (bit 0 start, bit 1 device->RAM, bit 2
 * interrupt on completion); the device's DMA buffer is at device address 0x40000 (4 KiB) and its
 * DMA addresses are masked to 28 bits.
 */
#include <linux/completion.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/random.h>

#define EDU_REG_ID 0x00
#define EDU_REG_LIVENESS 0x04
#define EDU_REG_FACTORIAL 0x08
#define EDU_REG_STATUS 0x20
#define EDU_REG_IRQ_STATUS 0x24
#define EDU_REG_IRQ_RAISE 0x60
#define EDU_REG_IRQ_ACK 0x64
#define EDU_REG_DMA_SRC 0x80
#define EDU_REG_DMA_DST 0x88
#define EDU_REG_DMA_COUNT 0x90
#define EDU_REG_DMA_CMD 0x98
#define EDU_STATUS_COMPUTING 0x1
#define EDU_STATUS_IRQ_FACTORIAL 0x80
#define EDU_IRQ_FACTORIAL 0x1
#define EDU_IRQ_DMA 0x100
#define EDU_DMA_START 0x1
#define EDU_DMA_TO_RAM 0x2
#define EDU_DMA_IRQ 0x4
#define EDU_DEVICE_BUFFER 0x40000
/*
 * Bytes per transfer. The device buffer is 4 KiB, but QEMU 7.2's edu range check refuses a
 * transfer that ends at the buffer's last byte, and refusing means hw_error(): the QEMU process
 * (the lab's outer L0 emulator) aborts. 2 KiB stays well inside.
 */
#define EDU_DMA_BYTES 2048
#define EDU_DMA_PAGE 4096

static bool intx;
module_param(intx, bool, 0444);
MODULE_PARM_DESC(intx, "use the INTx line (level-triggered, possibly shared) instead of MSI");

struct edu {
	void __iomem *bar;
	struct completion done;
	u32 last_status;
	unsigned int interrupts;
};

static irqreturn_t edu_irq(int irq, void *data)
{
	struct edu *e = data;
	u32 st = ioread32(e->bar + EDU_REG_IRQ_STATUS);

	if (!st)
		return IRQ_NONE;
	iowrite32(st, e->bar + EDU_REG_IRQ_ACK);
	e->last_status = st;
	e->interrupts++;
	complete(&e->done);
	return IRQ_HANDLED;
}

static int edu_wait(struct edu *e, const char *what, u32 *status)
{
	if (!wait_for_completion_timeout(&e->done, msecs_to_jiffies(10000))) {
		pr_info("IOVIRT-EDU-FAIL: no interrupt within 10 s for %s (irq status 0x%x)\n", what,
			ioread32(e->bar + EDU_REG_IRQ_STATUS));
		return -ETIMEDOUT;
	}
	*status = READ_ONCE(e->last_status);
	return 0;
}

#define EDU_CHECK(cond, ...)                                   \
	do {                                                   \
		if (!(cond)) {                                 \
			pr_info("IOVIRT-EDU-FAIL: " __VA_ARGS__); \
			return -EIO;                           \
		}                                              \
	} while (0)

static int edu_dma(struct edu *e, dma_addr_t src, dma_addr_t dst, u32 cmd, const char *what)
{
	u32 st;
	int rc;

	reinit_completion(&e->done);
	iowrite32(lower_32_bits(src), e->bar + EDU_REG_DMA_SRC);
	iowrite32(lower_32_bits(dst), e->bar + EDU_REG_DMA_DST);
	iowrite32(EDU_DMA_BYTES, e->bar + EDU_REG_DMA_COUNT);
	iowrite32(cmd | EDU_DMA_START | EDU_DMA_IRQ, e->bar + EDU_REG_DMA_CMD);
	rc = edu_wait(e, what, &st);
	if (rc)
		return rc;
	EDU_CHECK(st & EDU_IRQ_DMA, "%s: interrupt status 0x%x lacks the DMA bit\n", what, st);
	return 0;
}

static int edu_run(struct pci_dev *pdev, struct edu *e)
{
	u32 id, st, fact;
	u8 *buf;
	dma_addr_t dma;
	size_t i, same = 0;
	int rc;

	id = ioread32(e->bar + EDU_REG_ID);
	pr_info("IOVIRT-RESULT edu_id=0x%08x\n", id);
	EDU_CHECK((id & 0xff) == 0xed, "identification register 0x%08x is not edu's\n", id);
	iowrite32(0x12345678, e->bar + EDU_REG_LIVENESS);
	EDU_CHECK(ioread32(e->bar + EDU_REG_LIVENESS) == ~0x12345678u,
		  "liveness register did not invert\n");

	/* Factorial, completion signalled by an interrupt. */
	reinit_completion(&e->done);
	iowrite32(EDU_STATUS_IRQ_FACTORIAL, e->bar + EDU_REG_STATUS);
	iowrite32(10, e->bar + EDU_REG_FACTORIAL);
	rc = edu_wait(e, "factorial", &st);
	if (rc)
		return rc;
	EDU_CHECK(st & EDU_IRQ_FACTORIAL, "factorial interrupt status 0x%x\n", st);
	EDU_CHECK(!(ioread32(e->bar + EDU_REG_STATUS) & EDU_STATUS_COMPUTING),
		  "factorial still computing after its interrupt\n");
	fact = ioread32(e->bar + EDU_REG_FACTORIAL);
	pr_info("IOVIRT-RESULT edu_factorial_10=%u\n", fact);
	EDU_CHECK(fact == 3628800, "10! read back as %u\n", fact);
	iowrite32(0, e->bar + EDU_REG_STATUS);

	/* A software-raised interrupt carries its value in the status register. */
	reinit_completion(&e->done);
	iowrite32(0x5a000, e->bar + EDU_REG_IRQ_RAISE);
	rc = edu_wait(e, "raised interrupt", &st);
	if (rc)
		return rc;
	EDU_CHECK(st == 0x5a000, "raised interrupt status 0x%x, expected 0x5a000\n", st);

	/* DMA: guest RAM -> device buffer -> another page of guest RAM. */
	buf = dmam_alloc_coherent(&pdev->dev, 2 * EDU_DMA_PAGE, &dma, GFP_KERNEL);
	EDU_CHECK(buf, "cannot allocate DMA memory below 256 MiB\n");
	get_random_bytes(buf, EDU_DMA_BYTES);
	memset(buf + EDU_DMA_PAGE, 0, EDU_DMA_BYTES);
	pr_info("IOVIRT-RESULT edu_dma_addr=0x%llx\n", (unsigned long long)dma);
	rc = edu_dma(e, dma, EDU_DEVICE_BUFFER, 0, "DMA RAM->device");
	if (rc)
		return rc;
	rc = edu_dma(e, EDU_DEVICE_BUFFER, dma + EDU_DMA_PAGE, EDU_DMA_TO_RAM, "DMA device->RAM");
	if (rc)
		return rc;
	for (i = 0; i < EDU_DMA_BYTES; i++)
		same += buf[i] == buf[EDU_DMA_PAGE + i];
	pr_info("IOVIRT-RESULT edu_dma_bytes_ok=%zu/%d\n", same, EDU_DMA_BYTES);
	EDU_CHECK(same == EDU_DMA_BYTES, "DMA round trip changed %zu bytes\n", EDU_DMA_BYTES - same);

	pr_info("IOVIRT-RESULT edu_guest_interrupts=%u\n", e->interrupts);
	EDU_CHECK(e->interrupts == 4, "%u interrupts taken, expected 4\n", e->interrupts);
	pr_info("IOVIRT-EDU-OK\n");
	return 0;
}

static int edu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct edu *e;
	int rc;

	e = devm_kzalloc(&pdev->dev, sizeof(*e), GFP_KERNEL);
	if (!e)
		return -ENOMEM;
	init_completion(&e->done);
	rc = pcim_enable_device(pdev);
	EDU_CHECK(rc == 0, "pcim_enable_device: %d\n", rc);
	rc = pcim_iomap_regions(pdev, BIT(0), "iovirt_edu");
	EDU_CHECK(rc == 0, "cannot map BAR0: %d\n", rc);
	e->bar = pcim_iomap_table(pdev)[0];
	pci_set_master(pdev);
	rc = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(28));
	EDU_CHECK(rc == 0, "28-bit DMA mask refused: %d\n", rc);
	rc = pci_alloc_irq_vectors(pdev, 1, 1, intx ? PCI_IRQ_LEGACY : PCI_IRQ_MSI);
	EDU_CHECK(rc == 1, "no %s vector: %d\n", intx ? "INTx" : "MSI", rc);
	pr_info("IOVIRT-RESULT edu_irq_mode=%s\n", intx ? "intx" : "msi");
	pr_info("IOVIRT-RESULT edu_irq=%d\n", pci_irq_vector(pdev, 0));
	/* An INTx line may be shared: the handler returns IRQ_NONE when edu raised nothing. */
	rc = request_irq(pci_irq_vector(pdev, 0), edu_irq, intx ? IRQF_SHARED : 0, "iovirt_edu", e);
	if (rc) {
		pci_free_irq_vectors(pdev);
		EDU_CHECK(0, "request_irq: %d\n", rc);
	}
	pci_set_drvdata(pdev, e);
	rc = edu_run(pdev, e);
	if (rc) {
		free_irq(pci_irq_vector(pdev, 0), e);
		pci_free_irq_vectors(pdev);
	}
	return rc;
}

static void edu_remove(struct pci_dev *pdev)
{
	free_irq(pci_irq_vector(pdev, 0), pci_get_drvdata(pdev));
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id edu_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8) },
	{ 0 },
};
MODULE_DEVICE_TABLE(pci, edu_ids);

static struct pci_driver edu_driver = {
	.name = "iovirt_edu",
	.id_table = edu_ids,
	.probe = edu_probe,
	.remove = edu_remove,
};
module_pci_driver(edu_driver);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("iovirt lab: guest-side test of a passed-through QEMU edu device");
