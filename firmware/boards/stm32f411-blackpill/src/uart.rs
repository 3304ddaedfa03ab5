//! USART1 to the gateway, as the embedded-io port the node's loop uses:
//! received bytes come through the RXNE interrupt and a queue, sent bytes
//! go straight to the transmit register.

use core::cell::RefCell;

use cortex_m::interrupt::Mutex;
use heapless::spsc::{Consumer, Producer, Queue};
use stm32f4xx_hal::pac::{self, USART1};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::{self, Rx, Serial, Tx};

/// Received bytes waiting for the loop: two whole frames (135 bytes each
/// at most) minus a little; the loop drains it every millisecond, in which
/// 12 bytes arrive at 115200 baud.
const RX_QUEUE: usize = 256;

/// What the interrupt needs: the receiver and the queue's producing end.
type Receiver = (Rx<USART1>, Producer<'static, u8>);

/// The receiver, handed to the interrupt once set up.
static RX: Mutex<RefCell<Option<Receiver>>> = Mutex::new(RefCell::new(None));

/// The node's side of USART1.
pub struct Uart {
    tx: Tx<USART1>,
    rx: Consumer<'static, u8>,
}

impl Uart {
    /// Takes the configured USART and starts receiving by interrupt.
    pub fn new(mut serial: Serial<USART1>) -> Self {
        let Some(queue) = cortex_m::singleton!(: Queue<u8, RX_QUEUE> = Queue::new()) else {
            panic!("uart made twice");
        };
        let (producer, consumer) = queue.split();
        serial.listen(serial::Event::RxNotEmpty);
        let (tx, rx) = serial.split();
        cortex_m::interrupt::free(|cs| RX.borrow(cs).replace(Some((rx, producer))));
        // SAFETY: the handler only touches RX, set just above.
        unsafe { pac::NVIC::unmask(pac::Interrupt::USART1) };
        Uart { tx, rx: consumer }
    }
}

/// Moves what USART1 received into the queue. A full queue loses the byte:
/// the frame it belonged to fails its CRC, and the agent repeats it.
pub fn on_interrupt() {
    cortex_m::interrupt::free(|cs| {
        let mut rx = RX.borrow(cs).borrow_mut();
        let Some((rx, producer)) = rx.as_mut() else {
            return;
        };
        // Reading the data register (also on an error, which the HAL
        // does) clears the interrupt; an error ends this round.
        while let Ok(byte) = rx.read() {
            let _ = producer.enqueue(byte);
        }
    });
}

impl embedded_io::ErrorType for Uart {
    type Error = serial::Error;
}

impl embedded_io::ReadReady for Uart {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.rx.ready())
    }
}

impl embedded_io::Read for Uart {
    /// Blocks until at least one byte is there, then takes what the queue
    /// holds, up to `buf.len()`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let mut n = 0;
        while n < buf.len() {
            match self.rx.dequeue() {
                Some(byte) => {
                    buf[n] = byte;
                    n += 1;
                }
                None if n > 0 => break,
                None => cortex_m::asm::wfi(),
            }
        }
        Ok(n)
    }
}

impl embedded_io::Write for Uart {
    /// Blocks until the transmit register takes at least one byte.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = embedded_io::Write::write(&mut self.tx, buf)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        embedded_io::Write::flush(&mut self.tx)
    }
}
