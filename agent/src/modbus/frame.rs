//! Modbus RTU frames without I/O: requests out, responses in.
//!
//! An RTU ADU is `address, function, data..., CRC` with the CRC-16/MODBUS
//! of everything before it sent low byte first (Modbus over serial line
//! v1.02, 2.5.1.2 and 6.2.2). The master knows from its request how long
//! the answer must be, so [`Decoder`] frames a response by that expected
//! length rather than by the 3.5-character silence of the standard: USB
//! adapters deliver bytes in bursts (an FTDI chip waits 16 ms by default),
//! so silences on the host say nothing about frame ends.
//!
//! Bytes that do not start a valid answer (line noise, a late answer to an
//! earlier request, a frame split by the adapter and glued to garbage) are
//! dropped one at a time until a candidate with the right address, function,
//! length and CRC lines up: the decoder resynchronises on the next valid
//! frame and says how many bytes it discarded.
//!
//! ```
//! use kouan_agent::modbus::frame::{Decoded, Decoder, Request, Response};
//!
//! // Read three holding registers from 108 at device 17 (Modbus
//! // Application Protocol v1.1b3, 6.3).
//! let request = Request::read_holding(0x6B, 3);
//! assert_eq!(
//!     request.encode(0x11)?,
//!     [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87]
//! );
//! let mut decoder = Decoder::new(0x11, &request);
//! decoder.push(&[0x11, 0x03, 0x06, 0x02, 0x2B, 0x00, 0x00]);
//! assert!(matches!(decoder.decode(), Decoded::Pending));
//! decoder.push(&[0x00, 0x64, 0xC8, 0xBA]);
//! let Decoded::Response { response, .. } = decoder.decode() else { panic!() };
//! assert_eq!(response, Response::Registers(vec![555, 0, 100]));
//! # Ok::<(), kouan_agent::modbus::frame::RequestError>(())
//! ```

use crc::{CRC_16_MODBUS, Crc};

/// CRC-16/MODBUS: poly 0x8005 reflected (0xA001), init 0xFFFF.
const CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);

/// The longest RTU ADU: 256 bytes (serial line v1.02, 2.5.1).
pub const MAX_ADU: usize = 256;

/// The broadcast address: every device acts, none answers.
pub const BROADCAST: u8 = 0;

/// Registers per read request (FC 03/04): the answer must fit one ADU.
pub const MAX_READ_REGISTERS: u16 = 125;

/// Bits per read request (FC 01/02).
pub const MAX_READ_BITS: u16 = 2000;

/// Registers per write request (FC 16).
pub const MAX_WRITE_REGISTERS: u16 = 123;

/// The CRC-16/MODBUS of `bytes`.
pub fn crc16(bytes: &[u8]) -> u16 {
    CRC.checksum(bytes)
}

/// The function codes this master sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    /// 01: read coils.
    ReadCoils,
    /// 02: read discrete inputs.
    ReadDiscreteInputs,
    /// 03: read holding registers.
    ReadHoldingRegisters,
    /// 04: read input registers.
    ReadInputRegisters,
    /// 06: write single register.
    WriteSingleRegister,
    /// 16: write multiple registers.
    WriteMultipleRegisters,
}

impl Function {
    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Function::ReadCoils => 0x01,
            Function::ReadDiscreteInputs => 0x02,
            Function::ReadHoldingRegisters => 0x03,
            Function::ReadInputRegisters => 0x04,
            Function::WriteSingleRegister => 0x06,
            Function::WriteMultipleRegisters => 0x10,
        }
    }

    /// Whether the function reads bits (coils, discrete inputs).
    pub fn reads_bits(self) -> bool {
        matches!(self, Function::ReadCoils | Function::ReadDiscreteInputs)
    }
}

/// A request PDU: what to ask one device (or all, by broadcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// FC 01 to 04: `count` bits or registers from `address`.
    Read {
        /// One of the four read functions.
        function: Function,
        /// The first address (0-based: "40001" is 0).
        address: u16,
        /// How many.
        count: u16,
    },
    /// FC 06: one register.
    WriteSingle {
        /// The register.
        address: u16,
        /// Its new value.
        value: u16,
    },
    /// FC 16: consecutive registers from `address`.
    WriteMultiple {
        /// The first register.
        address: u16,
        /// The new values.
        values: Vec<u16>,
    },
}

/// Why a request cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 248 to 255 are reserved (serial line v1.02, 2.2).
    #[error("device address {0} is reserved (use 1 to 247, or 0 to broadcast a write)")]
    ReservedAddress(u8),
    /// Only writes may be broadcast: nobody answers a broadcast.
    #[error("a read cannot be broadcast (address 0): no device answers a broadcast")]
    BroadcastRead,
    /// The count is out of what the function allows.
    #[error("{function:?} of {count} is out of range (1 to {max})")]
    Count {
        /// The function.
        function: Function,
        /// What was asked.
        count: usize,
        /// The most it allows.
        max: u16,
    },
    /// `address + count` runs past 65535.
    #[error("addresses {address} + {count} run past 65535")]
    PastEnd {
        /// The first address.
        address: u16,
        /// How many.
        count: usize,
    },
    /// A read request carried a write function or the other way round.
    #[error("{0:?} is not a read function")]
    NotRead(Function),
}

impl Request {
    /// FC 01.
    pub fn read_coils(address: u16, count: u16) -> Request {
        Request::read(Function::ReadCoils, address, count)
    }

    /// FC 02.
    pub fn read_discrete_inputs(address: u16, count: u16) -> Request {
        Request::read(Function::ReadDiscreteInputs, address, count)
    }

    /// FC 03.
    pub fn read_holding(address: u16, count: u16) -> Request {
        Request::read(Function::ReadHoldingRegisters, address, count)
    }

    /// FC 04.
    pub fn read_input(address: u16, count: u16) -> Request {
        Request::read(Function::ReadInputRegisters, address, count)
    }

    /// A read with one of the four read functions.
    pub fn read(function: Function, address: u16, count: u16) -> Request {
        Request::Read {
            function,
            address,
            count,
        }
    }

    /// The request's function.
    pub fn function(&self) -> Function {
        match self {
            Request::Read { function, .. } => *function,
            Request::WriteSingle { .. } => Function::WriteSingleRegister,
            Request::WriteMultiple { .. } => Function::WriteMultipleRegisters,
        }
    }

    /// Checks the request against the limits of its function.
    pub fn check(&self, unit: u8) -> Result<(), RequestError> {
        if unit > 247 {
            return Err(RequestError::ReservedAddress(unit));
        }
        let (function, address, count, max) = match self {
            Request::Read {
                function,
                address,
                count,
            } => {
                if !function.reads_bits()
                    && !matches!(
                        function,
                        Function::ReadHoldingRegisters | Function::ReadInputRegisters
                    )
                {
                    return Err(RequestError::NotRead(*function));
                }
                if unit == BROADCAST {
                    return Err(RequestError::BroadcastRead);
                }
                let max = if function.reads_bits() {
                    MAX_READ_BITS
                } else {
                    MAX_READ_REGISTERS
                };
                (*function, *address, usize::from(*count), max)
            }
            Request::WriteSingle { .. } => return Ok(()),
            Request::WriteMultiple { address, values } => (
                Function::WriteMultipleRegisters,
                *address,
                values.len(),
                MAX_WRITE_REGISTERS,
            ),
        };
        if count == 0 || count > usize::from(max) {
            return Err(RequestError::Count {
                function,
                count,
                max,
            });
        }
        if usize::from(address) + count > 0x1_0000 {
            return Err(RequestError::PastEnd { address, count });
        }
        Ok(())
    }

    /// The ADU for device `unit`: address, PDU, CRC low byte first.
    pub fn encode(&self, unit: u8) -> Result<Vec<u8>, RequestError> {
        self.check(unit)?;

        // The largest request: FC 16 with 123 registers, 9 + 246 bytes.
        let mut adu = Vec::with_capacity(9 + 2 * MAX_WRITE_REGISTERS as usize);
        adu.push(unit);
        adu.push(self.function().code());
        match self {
            Request::Read { address, count, .. } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&count.to_be_bytes());
            }
            Request::WriteSingle { address, value } => {
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&value.to_be_bytes());
            }
            Request::WriteMultiple { address, values } => {
                // check() bounded the count to 123: it fits u16 and the
                // byte count fits u8.
                let count = values.len() as u16;
                adu.extend_from_slice(&address.to_be_bytes());
                adu.extend_from_slice(&count.to_be_bytes());
                adu.push((2 * values.len()) as u8);
                for value in values {
                    adu.extend_from_slice(&value.to_be_bytes());
                }
            }
        }
        let crc = crc16(&adu);
        adu.extend_from_slice(&crc.to_le_bytes());
        Ok(adu)
    }

    /// Bytes of the normal response's ADU.
    pub fn response_len(&self) -> usize {
        match self {
            Request::Read {
                function, count, ..
            } => 5 + data_len(*function, *count),
            Request::WriteSingle { .. } | Request::WriteMultiple { .. } => 8,
        }
    }
}

/// Bytes of data in the answer to a read of `count`.
fn data_len(function: Function, count: u16) -> usize {
    if function.reads_bits() {
        usize::from(count).div_ceil(8)
    } else {
        2 * usize::from(count)
    }
}

/// A device's normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// FC 01/02: the bits asked for, the first address first.
    Bits(Vec<bool>),
    /// FC 03/04: the registers asked for.
    Registers(Vec<u16>),
    /// FC 06/16: the write was done (the echo matched the request).
    Written,
}

/// An exception code (Modbus Application Protocol v1.1b3, 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExceptionCode {
    /// 01: the device does not support the function.
    IllegalFunction,
    /// 02: the address (or address + count) does not exist in the device.
    IllegalDataAddress,
    /// 03: a value in the request is not allowed.
    IllegalDataValue,
    /// 04: the device failed while acting.
    ServerDeviceFailure,
    /// 05: accepted, will take long (programming commands).
    Acknowledge,
    /// 06: busy with a long command; try later.
    ServerDeviceBusy,
    /// 08: parity error in the device's extended memory.
    MemoryParityError,
    /// 0A: a gateway has no path to the target.
    GatewayPathUnavailable,
    /// 0B: the gateway's target did not answer.
    GatewayTargetFailedToRespond,
    /// Any other code.
    Other(u8),
}

impl ExceptionCode {
    /// The code from its byte.
    pub fn from_byte(code: u8) -> ExceptionCode {
        match code {
            0x01 => ExceptionCode::IllegalFunction,
            0x02 => ExceptionCode::IllegalDataAddress,
            0x03 => ExceptionCode::IllegalDataValue,
            0x04 => ExceptionCode::ServerDeviceFailure,
            0x05 => ExceptionCode::Acknowledge,
            0x06 => ExceptionCode::ServerDeviceBusy,
            0x08 => ExceptionCode::MemoryParityError,
            0x0A => ExceptionCode::GatewayPathUnavailable,
            0x0B => ExceptionCode::GatewayTargetFailedToRespond,
            other => ExceptionCode::Other(other),
        }
    }

    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            ExceptionCode::IllegalFunction => 0x01,
            ExceptionCode::IllegalDataAddress => 0x02,
            ExceptionCode::IllegalDataValue => 0x03,
            ExceptionCode::ServerDeviceFailure => 0x04,
            ExceptionCode::Acknowledge => 0x05,
            ExceptionCode::ServerDeviceBusy => 0x06,
            ExceptionCode::MemoryParityError => 0x08,
            ExceptionCode::GatewayPathUnavailable => 0x0A,
            ExceptionCode::GatewayTargetFailedToRespond => 0x0B,
            ExceptionCode::Other(code) => code,
        }
    }
}

impl std::fmt::Display for ExceptionCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ExceptionCode::IllegalFunction => "illegal function",
            ExceptionCode::IllegalDataAddress => "illegal data address",
            ExceptionCode::IllegalDataValue => "illegal data value",
            ExceptionCode::ServerDeviceFailure => "server device failure",
            ExceptionCode::Acknowledge => "acknowledge",
            ExceptionCode::ServerDeviceBusy => "server device busy",
            ExceptionCode::MemoryParityError => "memory parity error",
            ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
            ExceptionCode::GatewayTargetFailedToRespond => "gateway target failed to respond",
            ExceptionCode::Other(_) => "unknown exception",
        };
        write!(f, "{name} ({:02X})", self.byte())
    }
}

/// Why a transaction gave no values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModbusError {
    /// The device answered with an exception.
    #[error("device {unit} answered function {function:02X} with exception {code}")]
    Exception {
        /// The device.
        unit: u8,
        /// The function asked.
        function: u8,
        /// What it said.
        code: ExceptionCode,
    },
    /// A frame with a good CRC that does not answer the request (a write
    /// echo that differs from what was written).
    #[error("device {unit} answered function {function:02X} with a mismatched echo")]
    Mismatch {
        /// The device.
        unit: u8,
        /// The function asked.
        function: u8,
    },
    /// The request breaks a rule of its function (the config check
    /// refuses such requests before start-up).
    #[error("request not sent: {0}")]
    Request(#[from] RequestError),
    /// No valid answer before the response timeout.
    #[error("device {unit} gave no valid answer within {ms} ms")]
    Timeout {
        /// The device.
        unit: u8,
        /// The time waited.
        ms: u64,
    },
}

/// What [`Decoder::decode`] found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// No whole answer yet; push more bytes.
    Pending,
    /// The answer.
    Response {
        /// Its content.
        response: Response,
        /// The ADU it came from.
        adu: Vec<u8>,
    },
    /// An exception answer, or a frame that does not answer the request.
    Error {
        /// Which.
        error: ModbusError,
        /// The ADU it came from.
        adu: Vec<u8>,
    },
}

/// Frames the answer to one request out of the bytes that arrive.
///
/// When [`Decoder::decode`] returns [`Decoded::Pending`] the buffer holds
/// less than one ADU ([`MAX_ADU`]): bytes are kept only while they can
/// still become the expected answer, so garbage never grows it.
#[derive(Debug, Clone)]
pub struct Decoder {
    unit: u8,
    request: Request,
    expected: usize,
    buf: Vec<u8>,
    discarded: usize,
}

impl Decoder {
    /// A decoder for the answer of device `unit` to `request`.
    pub fn new(unit: u8, request: &Request) -> Decoder {
        Decoder {
            unit,
            request: request.clone(),
            expected: request.response_len(),
            buf: Vec::with_capacity(MAX_ADU),
            discarded: 0,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes dropped so far while resynchronising.
    pub fn discarded(&self) -> usize {
        self.discarded
    }

    /// Bytes held that are not part of a decoded frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Looks for the answer in what has been pushed.
    ///
    /// Leading bytes that cannot start it are dropped (counted in
    /// [`Decoder::discarded`]). After a result, bytes behind the frame stay
    /// in [`Decoder::pending`]: the caller counts them as garbage.
    pub fn decode(&mut self) -> Decoded {
        loop {
            let Some(candidate) = self.candidate() else {
                return Decoded::Pending;
            };
            match candidate {
                Candidate::NeedMore => return Decoded::Pending,
                Candidate::Skip => {
                    self.buf.remove(0);
                    self.discarded += 1;
                }
                Candidate::Frame(len) => {
                    let adu: Vec<u8> = self.buf.drain(..len).collect();
                    return self.interpret(adu);
                }
            }
        }
    }

    /// What the front of the buffer may be; `None` when it is empty.
    fn candidate(&self) -> Option<Candidate> {
        let (&unit, rest) = self.buf.split_first()?;
        if unit != self.unit {
            return Some(Candidate::Skip);
        }
        let Some(&function) = rest.first() else {
            return Some(Candidate::NeedMore);
        };
        let code = self.request.function().code();
        let len = if function == code {
            self.expected
        } else if function == code | 0x80 {
            5
        } else {
            return Some(Candidate::Skip);
        };
        // A read's byte count is the third byte: a wrong one means this is
        // not the answer, even before the CRC can be checked.
        if let Request::Read {
            function: read,
            count,
            ..
        } = &self.request
            && function == code
            && let Some(&byte_count) = self.buf.get(2)
            && usize::from(byte_count) != data_len(*read, *count)
        {
            return Some(Candidate::Skip);
        }
        if self.buf.len() < len {
            return Some(Candidate::NeedMore);
        }
        let (body, crc) = self.buf[..len].split_at(len - 2);
        if crc16(body).to_le_bytes() != crc {
            return Some(Candidate::Skip);
        }
        Some(Candidate::Frame(len))
    }

    /// The meaning of a frame whose address, function, length and CRC fit.
    fn interpret(&self, adu: Vec<u8>) -> Decoded {
        let function = self.request.function().code();
        if adu[1] & 0x80 != 0 {
            let error = ModbusError::Exception {
                unit: self.unit,
                function,
                code: ExceptionCode::from_byte(adu[2]),
            };
            return Decoded::Error { error, adu };
        }
        let data = &adu[..adu.len() - 2];
        let response = match &self.request {
            Request::Read {
                function, count, ..
            } => {
                let data = &data[3..];
                if function.reads_bits() {
                    let bits = (0..usize::from(*count))
                        .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
                        .collect();
                    Response::Bits(bits)
                } else {
                    let registers = data
                        .chunks_exact(2)
                        .map(|w| u16::from_be_bytes([w[0], w[1]]))
                        .collect();
                    Response::Registers(registers)
                }
            }
            Request::WriteSingle { .. } | Request::WriteMultiple { .. } => {
                // The echo repeats the request's first six bytes (FC 06:
                // address and value; FC 16: address and count).
                let sent = self.request.encode(self.unit).unwrap_or_default();
                if sent.get(..6) != Some(&data[..6]) {
                    let error = ModbusError::Mismatch {
                        unit: self.unit,
                        function,
                    };
                    return Decoded::Error { error, adu };
                }
                Response::Written
            }
        };
        Decoded::Response { response, adu }
    }
}

enum Candidate {
    NeedMore,
    Skip,
    Frame(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        hex::decode(text.replace(' ', "")).unwrap()
    }

    fn decode_all(unit: u8, request: &Request, bytes: &[u8]) -> (Decoded, usize) {
        let mut decoder = Decoder::new(unit, request);
        decoder.push(bytes);
        let decoded = decoder.decode();
        (decoded, decoder.discarded())
    }

    fn registers(decoded: Decoded) -> Vec<u16> {
        match decoded {
            Decoded::Response {
                response: Response::Registers(r),
                ..
            } => r,
            other => panic!("not registers: {other:?}"),
        }
    }

    fn bits(decoded: Decoded) -> Vec<bool> {
        match decoded {
            Decoded::Response {
                response: Response::Bits(b),
                ..
            } => b,
            other => panic!("not bits: {other:?}"),
        }
    }

    /// Bits from a string of 0/1, first address first.
    fn bit_string(s: &str) -> Vec<bool> {
        s.bytes().map(|b| b == b'1').collect()
    }

    #[test]
    fn crc_check_value_and_serial_line_vector() {
        // The CRC-16/MODBUS check value and the vector of the field notes.
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert_eq!(
            Request::read_holding(0, 10).encode(1).unwrap(),
            hex("01 03 00 00 00 0A C5 CD")
        );
    }

    // The examples of Modbus Application Protocol v1.1b3, section 6, as
    // RTU ADUs for device 0x11; the CRCs agree with pymodbus 3.16's
    // FramerRTU.compute_CRC.

    #[test]
    fn fc01_read_coils_20_to_38() {
        let request = Request::read_coils(0x13, 0x13);
        assert_eq!(
            request.encode(0x11).unwrap(),
            hex("11 01 00 13 00 13 8E 92")
        );
        let (decoded, _) = decode_all(0x11, &request, &hex("11 01 03 CD 6B 05 40 12"));
        // CD = coils 27..20 (LSB = 20), 6B = 35..28, 05 = 38..36.
        let expected = bit_string("1011001111010110101");
        assert_eq!(bits(decoded), expected);
    }

    #[test]
    fn fc02_read_discrete_inputs_197_to_218() {
        let request = Request::read_discrete_inputs(0xC4, 0x16);
        assert_eq!(
            request.encode(0x11).unwrap(),
            hex("11 02 00 C4 00 16 BA A9")
        );
        let (decoded, _) = decode_all(0x11, &request, &hex("11 02 03 AC DB 35 20 18"));
        // AC = 204..197, DB = 212..205, 35 = 218..213 (two padding zeros).
        let expected = bit_string("0011010111011011101011");
        assert_eq!(bits(decoded), expected);
    }

    #[test]
    fn fc03_read_holding_registers_108_to_110() {
        let request = Request::read_holding(0x6B, 3);
        assert_eq!(
            request.encode(0x11).unwrap(),
            hex("11 03 00 6B 00 03 76 87")
        );
        let (decoded, _) = decode_all(0x11, &request, &hex("11 03 06 02 2B 00 00 00 64 C8 BA"));
        assert_eq!(registers(decoded), [555, 0, 100]);
    }

    #[test]
    fn fc04_read_input_register_9() {
        let request = Request::read_input(8, 1);
        assert_eq!(
            request.encode(0x11).unwrap(),
            hex("11 04 00 08 00 01 B2 98")
        );
        let (decoded, _) = decode_all(0x11, &request, &hex("11 04 02 00 0A F8 F4"));
        assert_eq!(registers(decoded), [10]);
    }

    #[test]
    fn fc06_write_register_2_and_its_echo() {
        let request = Request::WriteSingle {
            address: 1,
            value: 3,
        };
        let adu = request.encode(0x11).unwrap();
        assert_eq!(adu, hex("11 06 00 01 00 03 9A 9B"));
        let (decoded, _) = decode_all(0x11, &request, &adu);
        assert!(matches!(
            decoded,
            Decoded::Response {
                response: Response::Written,
                ..
            }
        ));
    }

    #[test]
    fn fc16_write_registers_2_and_3() {
        let request = Request::WriteMultiple {
            address: 1,
            values: vec![0x000A, 0x0102],
        };
        assert_eq!(
            request.encode(0x11).unwrap(),
            hex("11 10 00 01 00 02 04 00 0A 01 02 C6 F0")
        );
        let (decoded, _) = decode_all(0x11, &request, &hex("11 10 00 01 00 02 12 98"));
        assert!(matches!(
            decoded,
            Decoded::Response {
                response: Response::Written,
                ..
            }
        ));
    }

    #[test]
    fn write_echo_that_differs_is_a_mismatch() {
        let request = Request::WriteSingle {
            address: 1,
            value: 4,
        };
        let (decoded, _) = decode_all(0x11, &request, &hex("11 06 00 01 00 03 9A 9B"));
        assert!(matches!(
            decoded,
            Decoded::Error {
                error: ModbusError::Mismatch { unit: 0x11, .. },
                ..
            }
        ));
    }

    #[test]
    fn exception_illegal_data_address_from_the_specification() {
        // Section 7: read coil 1186 (04A1) of a device without it.
        let request = Request::read_coils(0x04A1, 1);
        assert_eq!(
            request.encode(0x11).unwrap(),
            hex("11 01 04 A1 00 01 AF 88")
        );
        let (decoded, discarded) = decode_all(0x11, &request, &hex("11 81 02 C0 54"));
        assert_eq!(discarded, 0);
        let Decoded::Error { error, adu } = decoded else {
            panic!("not an exception: {decoded:?}")
        };
        assert_eq!(
            error,
            ModbusError::Exception {
                unit: 0x11,
                function: 0x01,
                code: ExceptionCode::IllegalDataAddress
            }
        );
        assert_eq!(adu, hex("11 81 02 C0 54"));
        assert_eq!(
            error.to_string(),
            "device 17 answered function 01 with exception illegal data address (02)"
        );
    }

    #[test]
    fn every_exception_code_has_its_type() {
        let request = Request::read_holding(0, 1);
        let codes = [
            (0x01, ExceptionCode::IllegalFunction),
            (0x02, ExceptionCode::IllegalDataAddress),
            (0x03, ExceptionCode::IllegalDataValue),
            (0x04, ExceptionCode::ServerDeviceFailure),
            (0x05, ExceptionCode::Acknowledge),
            (0x06, ExceptionCode::ServerDeviceBusy),
            (0x08, ExceptionCode::MemoryParityError),
            (0x0A, ExceptionCode::GatewayPathUnavailable),
            (0x0B, ExceptionCode::GatewayTargetFailedToRespond),
            (0x42, ExceptionCode::Other(0x42)),
        ];
        for (byte, code) in codes {
            let mut adu = vec![0x07, 0x83, byte];
            adu.extend_from_slice(&crc16(&adu).to_le_bytes());
            let (decoded, _) = decode_all(7, &request, &adu);
            let Decoded::Error {
                error: ModbusError::Exception { code: got, .. },
                ..
            } = decoded
            else {
                panic!("{byte:02X}: {decoded:?}")
            };
            assert_eq!(got, code);
            assert_eq!(got.byte(), byte);
        }
    }

    #[test]
    fn answer_split_into_single_bytes() {
        let request = Request::read_holding(0x6B, 3);
        let adu = hex("11 03 06 02 2B 00 00 00 64 C8 BA");
        let mut decoder = Decoder::new(0x11, &request);
        for (i, byte) in adu.iter().enumerate() {
            assert_eq!(decoder.decode(), Decoded::Pending, "after {i} bytes");
            decoder.push(&[*byte]);
        }
        assert_eq!(registers(decoder.decode()), [555, 0, 100]);
        assert_eq!(decoder.discarded(), 0);
    }

    #[test]
    fn garbage_before_the_answer_is_skipped_and_counted() {
        let request = Request::read_holding(0x6B, 3);
        // Noise that starts like the answer (address, function, wrong
        // byte count), then a frame with a bad CRC, then the answer.
        let mut bytes = hex("FF 00 11 03 02 11 03 06 02 2B 00 00 00 64 C8 BB");
        let garbage = bytes.len();
        bytes.extend(hex("11 03 06 02 2B 00 00 00 64 C8 BA"));
        let (decoded, discarded) = decode_all(0x11, &request, &bytes);
        assert_eq!(registers(decoded), [555, 0, 100]);
        assert_eq!(discarded, garbage);
    }

    #[test]
    fn answer_of_another_device_is_not_taken() {
        let request = Request::read_input(8, 1);
        let mut other = hex("12 04 02 00 0A");
        other.extend_from_slice(&crc16(&other).to_le_bytes());
        let (decoded, discarded) = decode_all(0x11, &request, &other);
        assert_eq!(decoded, Decoded::Pending);
        assert_eq!(discarded, other.len());
    }

    #[test]
    fn bytes_behind_the_answer_stay_pending() {
        let request = Request::read_input(8, 1);
        let mut decoder = Decoder::new(0x11, &request);
        decoder.push(&hex("11 04 02 00 0A F8 F4 00 01"));
        assert_eq!(registers(decoder.decode()), [10]);
        assert_eq!(decoder.pending(), 2);
    }

    #[test]
    fn broadcast_only_writes() {
        assert_eq!(
            Request::read_holding(0, 1).encode(BROADCAST),
            Err(RequestError::BroadcastRead)
        );
        let write = Request::WriteSingle {
            address: 0,
            value: 1,
        };
        let adu = write.encode(BROADCAST).unwrap();
        assert_eq!(adu[0], 0);
        assert_eq!(write.encode(248), Err(RequestError::ReservedAddress(248)));
    }

    #[test]
    fn counts_are_limited_by_function() {
        assert!(Request::read_holding(0, 125).encode(1).is_ok());
        assert!(matches!(
            Request::read_holding(0, 126).encode(1),
            Err(RequestError::Count { max: 125, .. })
        ));
        assert!(Request::read_coils(0, 2000).encode(1).is_ok());
        assert!(matches!(
            Request::read_coils(0, 2001).encode(1),
            Err(RequestError::Count { max: 2000, .. })
        ));
        assert!(matches!(
            Request::read_input(0, 0).encode(1),
            Err(RequestError::Count { .. })
        ));
        assert!(matches!(
            Request::read_input(0xFFFF, 2).encode(1),
            Err(RequestError::PastEnd { .. })
        ));
        let write = Request::WriteMultiple {
            address: 0,
            values: vec![0; 124],
        };
        assert!(matches!(
            write.encode(1),
            Err(RequestError::Count { max: 123, .. })
        ));
        assert!(matches!(
            Request::read(Function::WriteSingleRegister, 0, 1).encode(1),
            Err(RequestError::NotRead(_))
        ));
    }

    #[test]
    fn largest_read_fits_one_adu() {
        assert_eq!(
            Request::read_holding(0, MAX_READ_REGISTERS).response_len(),
            255
        );
        assert!(Request::read_coils(0, MAX_READ_BITS).response_len() <= MAX_ADU);
    }
}
