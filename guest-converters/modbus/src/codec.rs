//! Modbus values to and from their bytes, as the ThingsBoard gateway reads
//! and writes them (pymodbus's `BinaryPayloadDecoder`/`Builder`).
//!
//! Registers travel big-endian on the wire; a value of several registers is
//! read by first swapping the two bytes of every register when the byte
//! order is `LITTLE`, then reversing the registers when the word order is
//! `LITTLE`, then reading the bytes big-endian. Writing does the reverse.
//! Coils and discrete inputs are bits, packed eight to a byte with the first
//! one in the least significant bit, as on the wire.

use std::fmt;

pub use tbgw_modbus_tags::{DataType, pack_bits, unpack_bits};

/// `BIG` or `LITTLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Big,
    Little,
}

impl Order {
    pub fn parse(text: &str) -> Result<Order, String> {
        match text.trim().to_ascii_uppercase().as_str() {
            "BIG" | ">" => Ok(Order::Big),
            "LITTLE" | "<" => Ok(Order::Little),
            _ => Err(format!("`{text}`: expected BIG or LITTLE")),
        }
    }
}

/// How a tag is read or written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Format {
    pub data_type: DataType,
    /// Registers (or coils) the tag spans.
    pub objects: u16,
    pub byte_order: Order,
    pub word_order: Order,
    /// For `bits` in registers: which bit (0 = least significant).
    pub bit: Option<u8>,
    /// `bits` as `true`/`false` (default) or `1`/`0`.
    pub bits_as_bool: bool,
    pub divider: Option<f64>,
    pub multiplier: Option<f64>,
    /// Decimals floats are rounded to (`round`; 6 by default, as the
    /// Python gateway).
    pub round: u8,
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Bool(bool),
    Int(i64),
    /// A `64uint` above `i64::MAX`: ThingsBoard keeps longs; sent as a double.
    Float(f64),
    Text(String),
    /// Several bits: a JSON array.
    Bits(Vec<bool>),
}

impl fmt::Display for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decoded::Bool(b) => write!(f, "{b}"),
            Decoded::Int(i) => write!(f, "{i}"),
            Decoded::Float(x) => write!(f, "{x}"),
            Decoded::Text(s) => f.write_str(s),
            Decoded::Bits(b) => write!(f, "{b:?}"),
        }
    }
}

/// The bytes of `registers`, reordered so that they read big-endian.
fn ordered(bytes: &[u8], byte_order: Order, word_order: Order) -> Vec<u8> {
    let mut words: Vec<[u8; 2]> = bytes.chunks(2).map(|c| [c[0], *c.get(1).unwrap_or(&0)]).collect();
    if byte_order == Order::Little {
        words.iter_mut().for_each(|w| w.swap(0, 1));
    }
    if word_order == Order::Little {
        words.reverse();
    }
    words.concat()
}

/// Decode a register tag from its registers' bytes (as on the wire).
pub fn decode_registers(bytes: &[u8], f: &Format) -> Result<Decoded, String> {
    let need = usize::from(f.objects.max(f.data_type.registers())) * 2;
    if bytes.len() < need {
        return Err(format!("needs {need} bytes, the block holds {}", bytes.len()));
    }
    let raw = &bytes[..need];
    let be = ordered(raw, f.byte_order, f.word_order);
    let value = match f.data_type {
        DataType::Bits => {
            let word = u16::from_be_bytes([be[0], be[1]]);
            match f.bit {
                Some(b) => bits_value(vec![word >> b & 1 == 1], f),
                None => bits_value(
                    (0..16).map(|b| word >> b & 1 == 1).take(usize::from(f.objects.max(1)) * 16).collect(),
                    f,
                ),
            }
        }
        DataType::Int(8) => Decoded::Int(i64::from(be[0] as i8)),
        DataType::UInt(8) => Decoded::Int(i64::from(be[0])),
        DataType::Int(16) => Decoded::Int(i64::from(i16::from_be_bytes([be[0], be[1]]))),
        DataType::UInt(16) => Decoded::Int(i64::from(u16::from_be_bytes([be[0], be[1]]))),
        DataType::Int(32) => Decoded::Int(i64::from(i32::from_be_bytes(be[..4].try_into().map_err(|_| "short")?))),
        DataType::UInt(32) => Decoded::Int(i64::from(u32::from_be_bytes(be[..4].try_into().map_err(|_| "short")?))),
        DataType::Int(_) => Decoded::Int(i64::from_be_bytes(be[..8].try_into().map_err(|_| "short")?)),
        DataType::UInt(_) => {
            let v = u64::from_be_bytes(be[..8].try_into().map_err(|_| "short")?);
            i64::try_from(v).map_or(Decoded::Float(v as f64), Decoded::Int)
        }
        DataType::Float(16) => Decoded::Float(f64::from(half_to_f32(u16::from_be_bytes([be[0], be[1]])))),
        DataType::Float(32) => Decoded::Float(f64::from(f32::from_be_bytes(be[..4].try_into().map_err(|_| "short")?))),
        DataType::Float(_) => Decoded::Float(f64::from_be_bytes(be[..8].try_into().map_err(|_| "short")?)),
        DataType::String => {
            // Text as stored: no word reordering, trailing NULs and spaces dropped.
            let text = ordered(raw, f.byte_order, Order::Big);
            let end = text.iter().rposition(|b| *b != 0 && *b != b' ').map_or(0, |i| i + 1);
            match std::str::from_utf8(&text[..end]) {
                Ok(s) => Decoded::Text(s.to_owned()),
                // Not text: its bytes in hex, as the Python gateway sends them.
                Err(_) => Decoded::Text(raw.iter().map(|b| format!("{b:02x}")).collect()),
            }
        }
        DataType::Bytes => Decoded::Text(raw.iter().map(|b| format!("{b:02x}")).collect()),
    };
    Ok(scale(value, f))
}

/// Decode a coil (or discrete input) tag from its bits.
pub fn decode_bits(bits: &[bool], f: &Format) -> Result<Decoded, String> {
    let n = usize::from(f.objects.max(1));
    if bits.len() < n {
        return Err(format!("needs {n} bits, the block holds {}", bits.len()));
    }
    Ok(match f.data_type {
        DataType::Bits => bits_value(bits[..n].to_vec(), f),
        // Other types over coils: the bits as an unsigned number, first coil
        // least significant.
        _ => Decoded::Int(bits[..n.min(63)].iter().rev().fold(0i64, |acc, b| acc << 1 | i64::from(*b))),
    })
}

fn bits_value(bits: Vec<bool>, f: &Format) -> Decoded {
    if bits.len() == 1 {
        if f.bits_as_bool { Decoded::Bool(bits[0]) } else { Decoded::Int(i64::from(bits[0])) }
    } else {
        Decoded::Bits(bits)
    }
}

fn scale(v: Decoded, f: &Format) -> Decoded {
    let x = match v {
        Decoded::Int(i) => i as f64,
        Decoded::Float(x) => x,
        other => return other,
    };
    match (f.divider, f.multiplier) {
        (Some(d), _) if d != 0.0 => Decoded::Float(round_to(x / d, f.round)),
        (None, Some(m)) => match v {
            Decoded::Int(i) if m.fract() == 0.0 && (m as i64).checked_mul(i).is_some() => Decoded::Int(i * m as i64),
            _ => Decoded::Float(round_to(x * m, f.round)),
        },
        _ => match v {
            Decoded::Float(x) => Decoded::Float(round_to(x, f.round)),
            other => other,
        },
    }
}

/// `decimals` decimals, as the Python gateway rounds floats.
fn round_to(x: f64, decimals: u8) -> f64 {
    let f = 10f64.powi(i32::from(decimals.min(15)));
    if x.is_finite() { (x * f).round() / f } else { x }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        0x1f if frac == 0.0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(i32::from(e) - 15),
    }
}

fn f32_to_half(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let frac = bits & 0x7f_ffff;
    if x.is_nan() {
        return 0x7e00;
    }
    if exp >= 0x1f {
        return sign | 0x7c00;
    }
    if exp <= 0 {
        if exp < -10 {
            return sign;
        }
        let m = (frac | 0x80_0000) >> (1 - exp);
        return sign | ((m + 0x1000) >> 13) as u16;
    }
    let half = sign as u32 | ((exp as u32) << 10) | (frac >> 13);
    // Round to nearest.
    (half + ((frac >> 12) & 1)) as u16
}

/// A value to write, as a request gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bits(Vec<bool>),
}

impl Input {
    fn as_f64(&self) -> Result<f64, String> {
        match self {
            Input::Bool(b) => Ok(f64::from(u8::from(*b))),
            Input::Int(i) => Ok(*i as f64),
            Input::Float(x) => Ok(*x),
            Input::Text(s) => s.trim().parse().map_err(|_| format!("`{s}` is not a number")),
            Input::Bits(_) => Err("a list of bits is not a number".into()),
        }
    }

    fn as_i128(&self) -> Result<i128, String> {
        match self {
            Input::Bool(b) => Ok(i128::from(*b)),
            Input::Int(i) => Ok(i128::from(*i)),
            Input::Float(x) if x.fract() == 0.0 && x.is_finite() => Ok(*x as i128),
            Input::Float(x) => Err(format!("{x} is not a whole number")),
            Input::Text(s) => s.trim().parse().map_err(|_| format!("`{s}` is not a whole number")),
            Input::Bits(_) => Err("a list of bits is not a number".into()),
        }
    }

    fn as_bits(&self, n: usize) -> Result<Vec<bool>, String> {
        let truthy = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Ok(true),
            "false" | "0" | "off" | "no" => Ok(false),
            other => Err(format!("`{other}` is not a bit (true/false, 1/0, on/off)")),
        };
        match self {
            Input::Bits(b) => Ok(b.clone()),
            Input::Bool(b) => Ok(vec![*b]),
            Input::Text(s) => Ok(vec![truthy(s)?]),
            other if n == 1 => Ok(vec![other.as_i128()? != 0]),
            // A number for several bits: its bits, least significant first.
            other => {
                let v = other.as_i128()?;
                Ok((0..n).map(|i| v >> i & 1 == 1).collect())
            }
        }
    }
}

/// Encode `value` as registers (big-endian bytes as on the wire) for
/// function code 6 or 16; divider/multiplier are undone first.
pub fn encode_registers(value: &Input, f: &Format) -> Result<Vec<u8>, String> {
    let scaled = |v: &Input| -> Result<Input, String> {
        Ok(match (f.divider, f.multiplier) {
            (Some(d), _) if d != 0.0 => Input::Float(v.as_f64()? * d),
            (None, Some(m)) if m != 0.0 => Input::Float(v.as_f64()? / m),
            _ => v.clone(),
        })
    };
    let int = |bits: u32, signed: bool| -> Result<Vec<u8>, String> {
        let v = match scaled(value)? {
            Input::Float(x) => x.round() as i128,
            other => other.as_i128()?,
        };
        let (min, max) =
            if signed { (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1) } else { (0, (1i128 << bits) - 1) };
        if v < min || v > max {
            return Err(format!(
                "{v} is out of range for a {bits}-bit {} integer",
                if signed { "signed" } else { "unsigned" }
            ));
        }
        let all = (v as u128).to_be_bytes();
        Ok(all[16 - (bits as usize / 8)..].to_vec())
    };
    let be: Vec<u8> = match f.data_type {
        // Read from the register's first byte (after byte order): written there.
        DataType::Int(8) => vec![int(8, true)?[0], 0],
        DataType::UInt(8) => vec![int(8, false)?[0], 0],
        DataType::Int(w) => int(u32::from(w), true)?,
        DataType::UInt(w) => int(u32::from(w), false)?,
        DataType::Float(16) => f32_to_half(scaled(value)?.as_f64()? as f32).to_be_bytes().to_vec(),
        DataType::Float(32) => (scaled(value)?.as_f64()? as f32).to_be_bytes().to_vec(),
        DataType::Float(_) => scaled(value)?.as_f64()?.to_be_bytes().to_vec(),
        DataType::Bits => {
            let bits = value.as_bits(16)?;
            let word = bits.iter().enumerate().take(16).fold(0u16, |acc, (i, b)| acc | (u16::from(*b) << i));
            word.to_be_bytes().to_vec()
        }
        DataType::String | DataType::Bytes => {
            let text = match value {
                Input::Text(s) => s.clone(),
                other => return Err(format!("{other:?} is not text")),
            };
            let mut bytes = text.into_bytes();
            let len = usize::from(f.objects.max(1)) * 2;
            if bytes.len() > len {
                return Err(format!("{} bytes of text do not fit in {} registers", bytes.len(), f.objects));
            }
            bytes.resize(len, 0);
            // Text is written as stored: bytes swapped per register for LITTLE.
            return Ok(ordered(&bytes, f.byte_order, Order::Big));
        }
    };
    // The reverse of reading: `ordered` is its own inverse.
    let mut padded = be;
    let len = usize::from(f.objects.max(f.data_type.registers())) * 2;
    if padded.len() < len {
        let mut p = vec![0; len - padded.len()];
        p.extend(padded);
        padded = p;
    }
    Ok(ordered(&padded, f.byte_order, f.word_order))
}

/// Encode `value` as coils for function code 5 or 15.
pub fn encode_bits(value: &Input, f: &Format) -> Result<Vec<bool>, String> {
    let n = usize::from(f.objects.max(1));
    let mut bits = value.as_bits(n)?;
    if bits.len() != n {
        if bits.len() == 1 && n > 1 {
            return Err(format!("one bit for {n} coils: give a list of {n} bits or a number"));
        }
        bits.resize(n, false);
    }
    Ok(bits)
}
