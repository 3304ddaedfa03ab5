//! Points: what a register or coil means.
//!
//! A point is a value of a device: where it is (table and 0-based
//! address), how its registers make a number (data type and word order),
//! and how that number becomes the measured value (`value = raw * scale +
//! offset`). Decoding is pure, so every type and order is tested here.
//!
//! 32-bit values span two registers, and devices disagree on the order of
//! their four bytes. Naming the bytes of the big-endian value `A B C D`
//! (A the most significant), the order says how they appear on the wire:
//!
//! | order  | wire bytes | seen on |
//! | ------ | ---------- | ------- |
//! | `abcd` | A B C D    | the Modbus default: high word first, big-endian words |
//! | `cdab` | C D A B    | low word first ("word swap"), common on PLCs and meters |
//! | `badc` | B A D C    | bytes swapped in each word |
//! | `dcba` | D C B A    | fully little-endian |
//!
//! ```
//! use kouan_agent::modbus::point::{DataType, WordOrder};
//!
//! // 1.5f32 is 3F C0 00 00; in `cdab` a device sends 00 00 3F C0.
//! let value = DataType::F32.decode(&[0x0000, 0x3FC0], WordOrder::Cdab);
//! assert_eq!(value, 1.5);
//! ```

use serde::Deserialize;

use super::frame::Function;

/// The four tables of the Modbus data model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Table {
    /// Read-write bits, read with FC 01 ("0xxxx" references).
    Coil,
    /// Read-only bits, read with FC 02 ("1xxxx").
    DiscreteInput,
    /// Read-only registers, read with FC 04 ("3xxxx").
    InputRegister,
    /// Read-write registers, read with FC 03 ("4xxxx").
    HoldingRegister,
}

impl Table {
    /// The function that reads the table.
    pub fn read_function(self) -> Function {
        match self {
            Table::Coil => Function::ReadCoils,
            Table::DiscreteInput => Function::ReadDiscreteInputs,
            Table::InputRegister => Function::ReadInputRegisters,
            Table::HoldingRegister => Function::ReadHoldingRegisters,
        }
    }

    /// The table's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete-input",
            Table::InputRegister => "input-register",
            Table::HoldingRegister => "holding-register",
        }
    }

    /// Whether the table holds bits.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// A manual's reference number (`40001`, `300010`, `00017`) as table
    /// and 0-based address: the leading digit is the table, the rest
    /// counts from 1, so "40001" is holding register 0.
    pub fn from_reference(reference: &str) -> Result<(Table, u16), String> {
        let digits = reference.trim();
        if !(5..=6).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "reference {reference:?} must be 5 or 6 digits, like 40001 or 300001"
            ));
        }
        let table = match digits.as_bytes()[0] {
            b'0' => Table::Coil,
            b'1' => Table::DiscreteInput,
            b'3' => Table::InputRegister,
            b'4' => Table::HoldingRegister,
            _ => {
                return Err(format!(
                    "reference {reference:?} must start with 0 (coil), 1 (discrete input), \
                     3 (input register) or 4 (holding register)"
                ));
            }
        };
        let number: u32 = digits[1..].parse().unwrap_or(0);
        if number == 0 || number > 0x1_0000 {
            return Err(format!(
                "reference {reference:?} is out of range: the number after the table digit \
                 counts from 1 to 65536"
            ));
        }
        // 1 to 65536 less one fits u16.
        Ok((table, (number - 1) as u16))
    }
}

/// How the registers of a point make a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A coil or discrete input: 0 or 1.
    Bool,
    /// One register, unsigned.
    #[default]
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Two registers, IEEE 754 single precision.
    F32,
}

impl DataType {
    /// The type's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
        }
    }

    /// Registers (or bits, for `bool`) the point spans.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    /// The number in `registers` (exactly [`DataType::width`] of them),
    /// before scale and offset. `bool` points are decoded by the caller
    /// from bits; here a register that is not 0 is 1.
    pub fn decode(self, registers: &[u16], order: WordOrder) -> f64 {
        let mut bytes = [0u8; 4];
        for (i, register) in registers.iter().take(2).enumerate() {
            bytes[2 * i..2 * i + 2].copy_from_slice(&register.to_be_bytes());
        }
        match self {
            DataType::Bool => f64::from(u8::from(registers.first().is_some_and(|r| *r != 0))),
            DataType::U16 => f64::from(u16::from_be_bytes(order.two(bytes))),
            DataType::I16 => f64::from(i16::from_be_bytes(order.two(bytes))),
            DataType::U32 => f64::from(u32::from_be_bytes(order.four(bytes))),
            DataType::I32 => f64::from(i32::from_be_bytes(order.four(bytes))),
            DataType::F32 => f64::from(f32::from_be_bytes(order.four(bytes))),
        }
    }
}

/// The order of a value's bytes on the wire (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// A B C D: big-endian, high word first.
    #[default]
    Abcd,
    /// C D A B: low word first.
    Cdab,
    /// B A D C: bytes swapped in each word.
    Badc,
    /// D C B A: little-endian.
    Dcba,
}

impl WordOrder {
    /// `A B C D` from the wire bytes of a 32-bit value.
    fn four(self, [w0, w1, w2, w3]: [u8; 4]) -> [u8; 4] {
        match self {
            WordOrder::Abcd => [w0, w1, w2, w3],
            WordOrder::Cdab => [w2, w3, w0, w1],
            WordOrder::Badc => [w1, w0, w3, w2],
            WordOrder::Dcba => [w3, w2, w1, w0],
        }
    }

    /// `A B` from the wire bytes of a 16-bit value: the orders that swap
    /// bytes within a word swap them here too; word order has no effect.
    fn two(self, [w0, w1, ..]: [u8; 4]) -> [u8; 2] {
        match self {
            WordOrder::Abcd | WordOrder::Cdab => [w0, w1],
            WordOrder::Badc | WordOrder::Dcba => [w1, w0],
        }
    }
}

/// A configured point, resolved: everything the poller needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Its name in readings (`device.point`).
    pub name: String,
    /// Its table.
    pub table: Table,
    /// Its 0-based address.
    pub address: u16,
    /// Its data type.
    pub data_type: DataType,
    /// Its byte order.
    pub order: WordOrder,
    /// Multiplied with the raw number.
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
    /// Its unit.
    pub unit: Option<String>,
}

impl Point {
    /// The measured value from the point's registers (or bits as 0/1).
    pub fn value(&self, registers: &[u16]) -> f64 {
        self.data_type.decode(registers, self.order) * self.scale + self.offset
    }

    /// The last address the point covers.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.width())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two registers a device sends for the big-endian bytes `abcd` in
    /// `order`.
    fn wire(abcd: [u8; 4], order: WordOrder) -> [u16; 2] {
        let [a, b, c, d] = abcd;
        let bytes = match order {
            WordOrder::Abcd => [a, b, c, d],
            WordOrder::Cdab => [c, d, a, b],
            WordOrder::Badc => [b, a, d, c],
            WordOrder::Dcba => [d, c, b, a],
        };
        [
            u16::from_be_bytes([bytes[0], bytes[1]]),
            u16::from_be_bytes([bytes[2], bytes[3]]),
        ]
    }

    const ORDERS: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    #[test]
    fn f32_in_all_four_orders() {
        for order in ORDERS {
            let registers = wire(0.137_f32.to_be_bytes(), order);
            assert_eq!(
                DataType::F32.decode(&registers, order),
                f64::from(0.137_f32),
                "{order:?}"
            );
        }
        // Pinned bytes: 1.5 is 3F C0 00 00.
        assert_eq!(
            DataType::F32.decode(&[0x3FC0, 0x0000], WordOrder::Abcd),
            1.5
        );
        assert_eq!(
            DataType::F32.decode(&[0x0000, 0x3FC0], WordOrder::Cdab),
            1.5
        );
        assert_eq!(
            DataType::F32.decode(&[0xC03F, 0x0000], WordOrder::Badc),
            1.5
        );
        assert_eq!(
            DataType::F32.decode(&[0x0000, 0xC03F], WordOrder::Dcba),
            1.5
        );
    }

    #[test]
    fn integers_of_32_bits_in_all_four_orders() {
        for order in ORDERS {
            let registers = wire(3_000_000_000_u32.to_be_bytes(), order);
            assert_eq!(DataType::U32.decode(&registers, order), 3e9, "{order:?}");
            let registers = wire((-123_456_i32).to_be_bytes(), order);
            assert_eq!(
                DataType::I32.decode(&registers, order),
                -123_456.0,
                "{order:?}"
            );
        }
    }

    #[test]
    fn sixteen_bit_types_and_byte_swap() {
        assert_eq!(DataType::U16.decode(&[0xFF38], WordOrder::Abcd), 65336.0);
        assert_eq!(DataType::I16.decode(&[0xFF38], WordOrder::Abcd), -200.0);
        assert_eq!(DataType::I16.decode(&[0xFF38], WordOrder::Cdab), -200.0);
        assert_eq!(DataType::I16.decode(&[0x38FF], WordOrder::Badc), -200.0);
        assert_eq!(DataType::U16.decode(&[0x0100], WordOrder::Dcba), 1.0);
    }

    #[test]
    fn scale_and_offset() {
        let point = Point {
            name: "t".into(),
            table: Table::HoldingRegister,
            address: 1,
            data_type: DataType::I16,
            order: WordOrder::Abcd,
            scale: 0.1,
            offset: -40.0,
            unit: None,
        };
        assert!((point.value(&[0xFF38]) - -60.0).abs() < 1e-9);
    }

    #[test]
    fn references_count_from_one() {
        assert_eq!(
            Table::from_reference("40001"),
            Ok((Table::HoldingRegister, 0))
        );
        assert_eq!(
            Table::from_reference("30010"),
            Ok((Table::InputRegister, 9))
        );
        assert_eq!(Table::from_reference("00001"), Ok((Table::Coil, 0)));
        assert_eq!(
            Table::from_reference("10017"),
            Ok((Table::DiscreteInput, 16))
        );
        assert_eq!(
            Table::from_reference("465536"),
            Ok((Table::HoldingRegister, 65535))
        );
        assert!(Table::from_reference("40000").is_err());
        assert!(Table::from_reference("20001").is_err());
        assert!(Table::from_reference("4001").is_err());
        assert!(Table::from_reference("4x001").is_err());
    }
}
