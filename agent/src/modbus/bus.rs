//! The bus task: one master, one request on the wire at a time.
//!
//! RS-485 is half duplex and Modbus RTU has a single master, so every
//! request to every device of a bus goes through this one loop: wait until
//! a point is due, then for each device with due points send its read
//! requests one after the other, each awaited until its answer, its
//! timeout, or its last retry. The [`Poller`] decides what is due and what
//! is reported; this file only moves bytes and logs.
//!
//! Timing: the response timeout starts when the request has left the wire
//! (its transmission time at the configured baud rate is added, as is the
//! answer's), so a long read at 9600 baud is not cut short. Between frames
//! the bus stays silent for 3.5 character times. Bytes that arrive while no
//! request is waiting are stale (a late answer, noise) and are discarded,
//! counted, before the next request goes out.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Mutex;

use super::frame::{BROADCAST, Decoded, Decoder, MAX_ADU, ModbusError, Request, Response};
use super::poll::{Change, Poller, frame_gap, wire_time};
use crate::clock::CaptureTime;
use crate::instrument::port::{Ended, SerialSettings};
use crate::instrument::{ErrorLog, Instrument, StoreRefused};
use crate::record::{MeasuredValue, Measurement, ReadingBody};

/// Bus timing from the serial settings and options.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Bits per character: start, data, parity, stop.
    pub char_bits: u32,
    /// Bits per second.
    pub baud: u32,
    /// The wait after a broadcast.
    pub turnaround: Duration,
}

impl Timing {
    /// The timing of a port with `settings`.
    pub fn new(settings: &SerialSettings, turnaround_ms: u64) -> Timing {
        let parity = u32::from(settings.parity != crate::instrument::port::Parity::None);
        Timing {
            char_bits: 1 + u32::from(settings.data_bits) + parity + u32::from(settings.stop_bits),
            baud: settings.baud,
            turnaround: Duration::from_millis(turnaround_ms),
        }
    }

    fn wire(&self, bytes: usize) -> Duration {
        wire_time(bytes, self.char_bits, self.baud)
    }

    fn gap(&self) -> Duration {
        frame_gap(self.char_bits, self.baud)
    }
}

/// How a request ended, when the port is still there.
#[derive(Debug)]
enum Outcome {
    /// The answer, and the ADU it came in.
    Answer(Response, Vec<u8>),
    /// An exception or a mismatched echo: the device is there but refused.
    Refused(ModbusError),
    /// No valid answer in any try.
    Silent,
}

/// One session on an opened port.
struct Link<'a, P> {
    instrument: &'a Instrument,
    port: P,
    timing: Timing,
    errors: ErrorLog,
}

/// Runs sessions on the bus until the agent stops. The poller lives
/// across sessions (health counters, last reported values); the mutex is
/// never contended, since sessions run one after the other: it only lets
/// each session's future borrow it.
pub async fn run_bus(
    instrument: &Instrument,
    poller: &Mutex<Poller>,
    settings: &SerialSettings,
    timing: Timing,
) {
    let Some(path) = instrument.config.port.clone() else {
        tracing::error!(instrument = %instrument.id(), "the modbus driver needs a port");
        return;
    };
    crate::instrument::supervise(
        instrument,
        || settings.open(&path),
        |port| async move {
            let mut poller = poller.lock().await;
            poller.writes_pending_all();
            let mut link = Link {
                instrument,
                port,
                timing,
                errors: ErrorLog::default(),
            };
            link.session(&mut poller).await
        },
    )
    .await;
}

impl<P: AsyncRead + AsyncWrite + Unpin> Link<'_, P> {
    async fn session(&mut self, poller: &mut Poller) -> Ended {
        let mut shutdown = self.instrument.shutdown.clone();
        loop {
            for ix in 0..poller.len() {
                if poller.spec(ix).address == BROADCAST
                    && poller.writes_pending(ix)
                    && let Err(ended) = self.configure(poller, ix).await
                {
                    return ended;
                }
            }
            // A bus of broadcast writes only has nothing more to do.
            let Some(next) = poller.next_due() else {
                crate::instrument::stopping(&mut shutdown).await;
                return Ended::Shutdown;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = crate::instrument::stopping(&mut shutdown) => return Ended::Shutdown,
            }

            for ix in 0..poller.len() {
                if *shutdown.borrow() {
                    return Ended::Shutdown;
                }
                if let Err(ended) = self.poll_device(poller, ix).await {
                    return ended;
                }
            }
        }
    }

    /// Reads device `ix`'s due points and stores one reading of those to
    /// report.
    async fn poll_device(&mut self, poller: &mut Poller, ix: usize) -> Result<(), Ended> {
        let now = Instant::now();
        let blocks = poller.due(ix, now);
        if blocks.is_empty() {
            return Ok(());
        }
        if poller.writes_pending(ix) {
            self.configure(poller, ix).await?;
        }

        let time = CaptureTime::now();
        let mut values = Vec::new();
        let mut raw = Vec::new();
        for block in blocks {
            let request = block.request();
            let registers = match self.request(poller, ix, &request).await? {
                Outcome::Answer(Response::Registers(registers), adu) => {
                    raw.push(adu);
                    registers
                }
                Outcome::Answer(Response::Bits(bits), adu) => {
                    raw.push(adu);
                    bits.into_iter().map(u16::from).collect()
                }
                Outcome::Answer(Response::Written, _) => continue,
                Outcome::Refused(error) => {
                    self.points_failing(poller, ix, &block.points, Some(error.to_string()));
                    continue;
                }
                // The device is not there: its other requests would only
                // keep the bus from the devices that are.
                Outcome::Silent => return Ok(()),
            };

            self.points_failing(poller, ix, &block.points, None);
            let mut reported = false;
            for p in block.points {
                let spec = &poller.spec(ix).points[p];
                let offset = usize::from(spec.point.address - block.address);
                let width = usize::from(spec.point.data_type.width());
                let Some(words) = registers.get(offset..offset + width) else {
                    continue;
                };
                let point = spec.point.clone();
                let value = point.value(words);
                if poller.report(ix, p, value, now) {
                    values.push(measurement(point.name, value, point.unit));
                    reported = true;
                }
            }
            if !reported {
                raw.pop();
            }
        }
        if values.is_empty() {
            return Ok(());
        }

        let body = ReadingBody::new(values, raw.concat());
        match self.instrument.store_reading(body, time).await {
            Ok(appended) => {
                tracing::debug!(
                    instrument = %self.instrument.id(),
                    device = %poller.spec(ix).name,
                    seq = appended.seq,
                    "reading stored"
                );
                Ok(())
            }
            Err(StoreRefused::Stopping) => Err(Ended::Shutdown),
            Err(error) => {
                // Lost: logged at error, as for every driver.
                count(&self.instrument.counters.errors, 1);
                tracing::error!(instrument = %self.instrument.id(), %error, "reading not stored");
                Ok(())
            }
        }
    }

    /// Sends device `ix`'s configuration writes. A refused write is logged
    /// and not repeated until the next attach; a silent device keeps them
    /// pending.
    async fn configure(&mut self, poller: &mut Poller, ix: usize) -> Result<(), Ended> {
        let writes = poller.spec(ix).writes.clone();
        for request in &writes {
            match self.request(poller, ix, request).await? {
                Outcome::Answer(..) => {}
                Outcome::Refused(error) => {
                    tracing::warn!(
                        instrument = %self.instrument.id(),
                        device = %poller.spec(ix).name,
                        %error,
                        "modbus configuration write refused"
                    );
                }
                Outcome::Silent => return Ok(()),
            }
        }
        poller.writes_done(ix);
        tracing::info!(
            instrument = %self.instrument.id(),
            device = %poller.spec(ix).name,
            writes = writes.len(),
            "modbus configuration written"
        );
        Ok(())
    }

    /// Logs each change of the points' state (failing with an error, or
    /// reading again) once.
    fn points_failing(
        &self,
        poller: &mut Poller,
        ix: usize,
        points: &[usize],
        error: Option<String>,
    ) {
        for &p in points {
            if !poller.point_state(ix, p, error.clone()) {
                continue;
            }
            let point = &poller.spec(ix).points[p].point;
            match &error {
                Some(error) => tracing::warn!(
                    instrument = %self.instrument.id(),
                    point = %point.name,
                    register = point.address,
                    table = point.table.name(),
                    %error,
                    "modbus point unreadable"
                ),
                None => tracing::info!(
                    instrument = %self.instrument.id(),
                    point = %point.name,
                    "modbus point readable again"
                ),
            }
        }
    }

    /// One request to device `ix` with its retries, and the health and
    /// logs that follow from how it went.
    async fn request(
        &mut self,
        poller: &mut Poller,
        ix: usize,
        request: &Request,
    ) -> Result<Outcome, Ended> {
        let spec = poller.spec(ix);
        let (unit, timeout, name) = (spec.address, spec.timeout, spec.name.clone());
        // A device already known to be silent gets one try a poll: its
        // retries would hold the bus from the devices that answer.
        let tries = if poller.health(ix).answering == Some(false) {
            1
        } else {
            1 + spec.retries
        };

        if unit == BROADCAST {
            // Nobody answers a broadcast: there is no health to keep.
            return Ok(match self.transact(unit, request, timeout).await? {
                Some(Ok((response, adu))) => Outcome::Answer(response, adu),
                Some(Err(error)) => Outcome::Refused(error),
                None => Outcome::Silent,
            });
        }

        let mut outcome = None;
        for _ in 0..tries {
            match self.transact(unit, request, timeout).await? {
                Some(Ok((response, adu))) => {
                    outcome = Some(Outcome::Answer(response, adu));
                    break;
                }
                Some(Err(error)) => {
                    outcome = Some(Outcome::Refused(error));
                    break;
                }
                None => poller.timed_out(ix),
            }
        }

        let ms = timeout.as_millis().try_into().unwrap_or(u64::MAX);
        let (change, outcome) = match outcome {
            Some(outcome @ Outcome::Answer(..)) => (poller.answered(ix), outcome),
            Some(outcome) => {
                count(&self.instrument.counters.errors, 1);
                (poller.refused(ix), outcome)
            }
            None => {
                count(&self.instrument.counters.errors, 1);
                (poller.silent(ix), Outcome::Silent)
            }
        };
        let health = poller.health(ix);
        super::publish_health(self.instrument.id(), unit, &name, health);
        match change {
            Some(Change::Answering) => tracing::info!(
                instrument = %self.instrument.id(),
                device = %name,
                address = unit,
                "modbus device answering"
            ),
            Some(Change::NotAnswering) => tracing::warn!(
                instrument = %self.instrument.id(),
                device = %name,
                address = unit,
                tries,
                timeouts = health.timeouts,
                error = %ModbusError::Timeout { unit, ms },
                "modbus device not answering (still polled, one try a poll)"
            ),
            None => {}
        }
        Ok(outcome)
    }

    /// One try: `None` when no valid answer came in time; `Err(Ended)`
    /// when the port failed.
    async fn transact(
        &mut self,
        unit: u8,
        request: &Request,
        timeout: Duration,
    ) -> Result<Option<Result<(Response, Vec<u8>), ModbusError>>, Ended> {
        let adu = match request.encode(unit) {
            Ok(adu) => adu,
            Err(error) => return Ok(Some(Err(error.into()))),
        };
        self.discard_stale().await?;

        if let Err(error) = self.port.write_all(&adu).await {
            return Err(Ended::Lost(error));
        }
        let sent = self.timing.wire(adu.len());
        tracing::trace!(instrument = %self.instrument.id(), adu = %hex::encode(&adu), "modbus request");
        if unit == BROADCAST {
            // Nobody answers a broadcast; the devices need the turnaround
            // delay to act on it before the next request.
            tokio::time::sleep(sent + self.timing.turnaround).await;
            return Ok(Some(Ok((Response::Written, Vec::new()))));
        }

        let deadline =
            tokio::time::Instant::now() + sent + timeout + self.timing.wire(request.response_len());
        let mut decoder = Decoder::new(unit, request);
        // One ADU at most is read at a time, so a decode never looks at
        // more than two frames' worth of bytes.
        let mut buf = [0u8; MAX_ADU];
        let result = loop {
            tokio::select! {
                read = self.port.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => {
                            return Err(Ended::Lost(std::io::Error::other("end of file")));
                        }
                        Ok(n) => n,
                        Err(error) => return Err(Ended::Lost(error)),
                    };
                    self.instrument.count_bytes(n);
                    decoder.push(&buf[..n]);
                    match decoder.decode() {
                        Decoded::Pending => continue,
                        Decoded::Response { response, adu } => break Some(Ok((response, adu))),
                        Decoded::Error { error, .. } => break Some(Err(error)),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break None,
            }
        };

        let garbage = decoder.discarded() + decoder.pending();
        if garbage > 0 {
            let detail = format!(
                "{garbage} bytes around the answer of device {unit} to function {:02X}",
                request.function().code()
            );
            self.instrument
                .count_error(&mut self.errors, "modbus: bytes discarded", &detail);
        }
        // The silence that ends a frame, before the next request.
        tokio::time::sleep(self.timing.gap()).await;
        Ok(result)
    }

    /// Reads and drops what arrived while no request was waiting.
    async fn discard_stale(&mut self) -> Result<(), Ended> {
        // Stale bytes are only counted, so any size does; one ADU matches
        // the reads of a transaction.
        let mut buf = [0u8; MAX_ADU];
        let mut stale = 0;
        // A zero timeout polls the read once: bytes the reactor has seen
        // are taken, an empty port ends the loop. Bytes it has not seen yet
        // reach the next answer's decoder, which skips and counts them.
        while let Ok(read) = tokio::time::timeout(Duration::ZERO, self.port.read(&mut buf)).await {
            match read {
                Ok(0) => return Err(Ended::Lost(std::io::Error::other("end of file"))),
                Ok(n) => stale += n,
                Err(error) => return Err(Ended::Lost(error)),
            }
        }
        if stale > 0 {
            self.instrument.count_bytes(stale);
            self.instrument.count_error(
                &mut self.errors,
                "modbus: bytes discarded",
                &format!("{stale} bytes arrived while no request was waiting"),
            );
        }
        Ok(())
    }
}

fn count(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// A measured value; a float that is not a number (a sensor fault on many
/// f32 devices) is kept as text, since CBOR readers differ on NaN.
fn measurement(name: String, value: f64, unit: Option<String>) -> Measurement {
    if value.is_finite() {
        Measurement::new(name, MeasuredValue::Number(value), unit)
    } else {
        let mut m = Measurement::new(name, MeasuredValue::Text(value.to_string()), unit);
        m.flags.push("not-finite".into());
        m
    }
}
