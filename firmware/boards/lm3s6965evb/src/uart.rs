//! UART0 of the LM3S6965, an ARM PL011, as an embedded-io serial port.
//!
//! Polled, no interrupts: the node's loop reads what the 16-byte receive
//! FIFO holds at every millisecond tick (docs/firmware.md explains why this
//! suffices under QEMU and not on real silicon at 115200 baud without the
//! FIFO). Register offsets are those of the PL011 technical reference
//! manual (ARM DDI 0183), which the LM3S6965 datasheet follows.

use core::convert::Infallible;

/// UART0's base address.
const UART0: usize = 0x4000_C000;

/// Data register: a read pops the receive FIFO, a write pushes transmit.
const DR: usize = 0x000;
/// Flag register.
const FR: usize = 0x018;
/// Integer and fractional baud rate divisors.
const IBRD: usize = 0x024;
const FBRD: usize = 0x028;
/// Line control: word length, FIFOs.
const LCRH: usize = 0x02C;
/// Control: enables.
const CTL: usize = 0x030;

const FR_BUSY: u32 = 1 << 3;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
const LCRH_FEN: u32 = 1 << 4;
const LCRH_WLEN_8: u32 = 0b11 << 5;
const CTL_UARTEN: u32 = 1 << 0;
const CTL_TXE: u32 = 1 << 8;
const CTL_RXE: u32 = 1 << 9;

/// The system control's clock gates: UART0 in RCGC1, GPIO port A in RCGC2.
const RCGC1: usize = 0x400F_E104;
const RCGC2: usize = 0x400F_E108;
/// GPIO port A: alternate function select and digital enable of PA0/PA1.
const GPIO_A_AFSEL: usize = 0x4000_4420;
const GPIO_A_DEN: usize = 0x4000_451C;

/// UART0 at 115200 baud, 8N1, FIFOs on.
#[derive(Debug)]
pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    /// Clocks UART0 and its pins and configures it. Call once.
    pub fn uart0() -> Self {
        set_bits(RCGC1, 1);
        set_bits(RCGC2, 1);
        set_bits(GPIO_A_AFSEL, 0b11);
        set_bits(GPIO_A_DEN, 0b11);

        let uart = Pl011 { base: UART0 };
        uart.write_reg(CTL, 0);
        // 12 MHz / (16 × 115200) = 6.5104: integer 6, fraction
        // round(0.5104 × 64) = 33. LCRH must follow the divisors to latch them.
        uart.write_reg(IBRD, 6);
        uart.write_reg(FBRD, 33);
        uart.write_reg(LCRH, LCRH_WLEN_8 | LCRH_FEN);
        uart.write_reg(CTL, CTL_UARTEN | CTL_TXE | CTL_RXE);
        uart
    }

    fn flags(&self) -> u32 {
        self.read_reg(FR)
    }

    fn read_reg(&self, offset: usize) -> u32 {
        // SAFETY: `base + offset` is a PL011 register of this UART, which
        // only this value owns; reads have no side effect except on DR,
        // whose pop is what the caller asked for.
        unsafe { ((self.base + offset) as *const u32).read_volatile() }
    }

    fn write_reg(&self, offset: usize, value: u32) {
        // SAFETY: as in `read_reg`; the values written are those the
        // PL011 manual defines for each register.
        unsafe { ((self.base + offset) as *mut u32).write_volatile(value) }
    }
}

/// Sets bits in a system or GPIO register, leaving the others.
fn set_bits(address: usize, bits: u32) {
    // SAFETY: called only with the LM3S6965's clock-gate and GPIO port A
    // registers, during start-up, before anything else uses them.
    unsafe {
        let reg = address as *mut u32;
        reg.write_volatile(reg.read_volatile() | bits);
    }
}

impl embedded_io::ErrorType for Pl011 {
    type Error = Infallible;
}

impl embedded_io::ReadReady for Pl011 {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.flags() & FR_RXFE == 0)
    }
}

impl embedded_io::Read for Pl011 {
    /// Blocks until at least one byte is there, then takes what the FIFO
    /// holds, up to `buf.len()`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let mut n = 0;
        while n < buf.len() {
            if self.flags() & FR_RXFE != 0 {
                if n > 0 {
                    break;
                }
                continue;
            }
            // The low byte is the data; bits 11:8 are error flags, which a
            // frame's CRC catches anyway.
            buf[n] = self.read_reg(DR) as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for Pl011 {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &byte in buf {
            while self.flags() & FR_TXFF != 0 {}
            self.write_reg(DR, u32::from(byte));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        while self.flags() & FR_BUSY != 0 {}
        Ok(())
    }
}
