//! The Modbus tag schema, as the ThingsBoard IoT Gateway's `modbus.json`
//! writes a slave's `attributes[]`, `timeseries[]`, `attributeUpdates[]`
//! and `rpc[]` entries: where a tag is (function code, address or address
//! range, objects) and how wide its type is. Plain data, no I/O, no
//! decoding: the Modbus connector plans its reads with it, and the `modbus`
//! converter reads its tags with it before it adds how their bytes decode.
//! Also the coils' packing, the contract's representation of coils.
//!
//! An entry's shape is its `tag`, `type`, `functionCode`, `address` and
//! `objectsCount` (or `registersCount`, `registerCount`) ([`SHAPE_KEYS`]);
//! [`shape`] checks them, with errors that name the field.
//!
//! An `address` may be a range (`"100-199"`), as the Python gateway's "wide
//! range" tags: one tag per value, `objectsCount` apart, keyed by `tag` with
//! `${address}`, `${unitId}`, `${functionCode}`, `${type}` and
//! `${objectsCount}` filled in (`_${address}` appended when the tag has no
//! `${address}`, so every value has its own key).

use serde_json::Value;
pub use tbgw_data::ConfigError;
use tbgw_data::config::{self, Obj};

/// Function codes that read (attributes, timeseries).
pub const READS: &[u8] = &[1, 2, 3, 4];
/// Function codes that write (attributeUpdates).
pub const WRITES: &[u8] = &[5, 6, 15, 16];
/// Function codes of `rpc[]` entries: reads and writes.
pub const RPC: &[u8] = &[1, 2, 3, 4, 5, 6, 15, 16];

/// The keys of an entry that make its shape; the rest is the converter's.
pub const SHAPE_KEYS: [&str; 7] =
    ["tag", "type", "functionCode", "address", "objectsCount", "registersCount", "registerCount"];

/// What makes two slaves' tag lists alike: the converter's compact config
/// gives slaves with the same of these one profile. `unitId` counts only
/// where a range's keys name it (`${unitId}`).
pub const PROFILE_KEYS: [&str; 7] =
    ["attributes", "timeseries", "attributeUpdates", "rpc", "byteOrder", "wordOrder", "unitId"];

/// A tag's data type (`type` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// One bit (a coil, or bit `bit` of a register) or several.
    Bits,
    Int(u8),
    UInt(u8),
    Float(u8),
    /// UTF-8 text, two characters per register.
    String,
    /// Raw bytes, shown as hex.
    Bytes,
}

impl DataType {
    /// Parse a config `type`; `objects` decides the width of the types that
    /// leave it open (`int`, `uint`, `float`), as in the Python gateway.
    pub fn parse(text: &str, objects: u16) -> Result<DataType, String> {
        let lower = text.trim().to_ascii_lowercase();
        let width = |bits: u32| u8::try_from(bits).unwrap_or(0);
        let open = width(u32::from(objects) * 16);
        let t = match lower.as_str() {
            "bits" | "bit" | "coil" | "coils" | "bool" | "boolean" => DataType::Bits,
            "string" | "str" => DataType::String,
            "bytes" => DataType::Bytes,
            "int" | "integer" | "long" | "word" | "dword" => DataType::Int(open),
            "uint" | "unsigned" => DataType::UInt(open),
            "float" | "double" => DataType::Float(open),
            other => {
                let (num, kind) = other.split_at(other.find(|c: char| !c.is_ascii_digit()).unwrap_or(other.len()));
                match (num.parse::<u8>().ok(), kind) {
                    (Some(n @ (8 | 16 | 32 | 64)), "int") => DataType::Int(n),
                    (Some(n @ (8 | 16 | 32 | 64)), "uint") => DataType::UInt(n),
                    (Some(n @ (16 | 32 | 64)), "float") => DataType::Float(n),
                    _ => {
                        return Err(format!(
                            "unknown type `{text}`; expected bits, 8int/8uint, 16int/16uint/16float, \
                             32int/32uint/32float, 64int/64uint/64float, int/uint/float (sized by objectsCount), \
                             string or bytes"
                        ));
                    }
                }
            }
        };
        match t {
            DataType::Int(w) | DataType::UInt(w) if !matches!(w, 8 | 16 | 32 | 64) => {
                Err(format!("`{text}` with objectsCount {objects} is {w} bits wide; Modbus integers are 16, 32 or 64"))
            }
            DataType::Float(w) if !matches!(w, 16 | 32 | 64) => {
                Err(format!("`{text}` with objectsCount {objects} is {w} bits wide; floats are 16, 32 or 64"))
            }
            t => Ok(t),
        }
    }

    /// Registers a value of this type takes at least.
    pub fn registers(self) -> u16 {
        match self {
            DataType::Int(w) | DataType::UInt(w) | DataType::Float(w) => u16::from(w).div_ceil(16),
            DataType::Bits | DataType::String | DataType::Bytes => 1,
        }
    }
}

/// Where a tag is: one address, or a range (`"0-9"`, both ends read) of
/// values `objects` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    One(u16),
    Range(u16, u16),
}

/// An entry's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// `tag`: the key, or for a range the template of its keys.
    pub tag: String,
    /// `type` as written (ranges' keys may name it).
    pub type_text: String,
    pub data_type: DataType,
    pub function_code: u8,
    pub address: Address,
    /// Registers (or coils) one value spans.
    pub objects: u16,
}

impl Shape {
    /// Each tag of the entry: its key and address. One for one address; for
    /// a range, whole values only (registers left over at its end are not
    /// read: the Python gateway reads them and fails to decode them).
    pub fn tags(&self, unit_id: u8) -> Vec<(String, u16)> {
        match self.address {
            Address::One(a) => vec![(self.tag.clone(), a)],
            Address::Range(first, last) => (u32::from(first)..=u32::from(last))
                .step_by(usize::from(self.objects.max(1)))
                .filter(|a| a + u32::from(self.objects) - 1 <= u32::from(last))
                .map(|a| {
                    let a = a as u16;
                    (self.range_key(a, unit_id), a)
                })
                .collect(),
        }
    }

    fn range_key(&self, address: u16, unit_id: u8) -> String {
        let mut key = self.tag.clone();
        if !key.contains("${address}") {
            key.push_str("_${address}");
        }
        key.replace("${address}", &address.to_string())
            .replace("${unitId}", &unit_id.to_string())
            .replace("${functionCode}", &self.function_code.to_string())
            .replace("${type}", &self.type_text)
            .replace("${objectsCount}", &self.objects.to_string())
    }
}

/// Read an entry's shape (`item`, found at `path`); `codes` are the function
/// codes its list allows; ranges only where `ranges_allowed` (reads). Only
/// the shape's keys are read: the rest of the entry is the converter's.
pub fn shape(path: &str, item: &Value, codes: &[u8], ranges_allowed: bool) -> Result<Shape, ConfigError> {
    let mut o = Obj::new(path, item)?;
    let tag = o.req_str("tag")?.to_owned();
    let type_text = o.req_str("type")?.to_owned();
    let function_code = match o.opt_uint("functionCode", 255)? {
        Some(fc) if codes.contains(&(fc as u8)) => fc as u8,
        Some(fc) => {
            return Err(ConfigError::at(
                o.field("functionCode"),
                format!("{fc} does not fit here; expected one of {codes:?}"),
            ));
        }
        None => return Err(o.missing("functionCode")),
    };
    let address = address(&mut o, ranges_allowed)?;
    let mut count = None;
    for key in ["objectsCount", "registersCount", "registerCount"] {
        if let Some(c) = o.opt_uint(key, 2000)? {
            count = Some(c as u16);
        }
    }
    let data_type = DataType::parse(&type_text, count.unwrap_or(1)).map_err(|e| ConfigError::at(o.field("type"), e))?;
    let coils = matches!(function_code, 1 | 2 | 5 | 15);
    let objects = count.unwrap_or(if coils { 1 } else { data_type.registers() });
    if !coils && objects < data_type.registers() {
        return Err(ConfigError::at(
            o.field("objectsCount"),
            format!("`{type_text}` needs {} registers, objectsCount is {objects}", data_type.registers()),
        ));
    }
    if objects == 0 {
        return Err(ConfigError::at(o.field("objectsCount"), "must be at least 1"));
    }
    Ok(Shape { tag, type_text, data_type, function_code, address, objects })
}

fn address(o: &mut Obj, ranges_allowed: bool) -> Result<Address, ConfigError> {
    let at = o.field("address");
    let bad = || ConfigError::at(&at, "expected an address from 0 to 65535, or a range `first-last`");
    match o.get("address") {
        Some(Value::Number(n)) => n.as_u64().and_then(|a| u16::try_from(a).ok()).map(Address::One).ok_or_else(bad),
        Some(Value::String(s)) => match s.split_once('-') {
            None => s.trim().parse().map(Address::One).map_err(|_| bad()),
            Some(_) if !ranges_allowed => Err(ConfigError::at(
                &at,
                format!("`{s}`: address ranges are for reading (attributes, timeseries); write one address"),
            )),
            Some((first, last)) => match (first.trim().parse::<u16>(), last.trim().parse::<u16>()) {
                (Ok(first), Ok(last)) if first <= last => Ok(Address::Range(first, last)),
                (Ok(first), Ok(last)) => {
                    Err(ConfigError::at(&at, format!("`{s}`: the range ends ({last}) before it starts ({first})")))
                }
                _ => Err(bad()),
            },
        },
        None | Some(Value::Null) => Err(o.missing("address")),
        Some(_) => Err(bad()),
    }
}

/// What a slave polls: (function code, address, objects) of every tag of its
/// `attributes` and `timeseries` (the slave object at `path`).
pub fn reads(path: &str, slave: &Value, unit_id: u8) -> Result<Vec<(u8, u16, u16)>, ConfigError> {
    let mut o = Obj::new(path, slave)?;
    let mut out = Vec::new();
    for list in ["attributes", "timeseries"] {
        for (at, e) in config::array(&mut o, list)? {
            let s = shape(&at, e, READS, true)?;
            out.extend(s.tags(unit_id).into_iter().map(|(_, a)| (s.function_code, a, s.objects)));
        }
    }
    Ok(out)
}

/// The keys an `attributes[]`/`timeseries[]` entry reports under: its `tag`,
/// or one per value of an address range (none if the entry is not valid:
/// [`shape`] says why).
pub fn entry_keys(item: &Value, unit_id: u8) -> Vec<String> {
    shape("", item, READS, true).map(|s| s.tags(unit_id).into_iter().map(|(k, _)| k).collect()).unwrap_or_default()
}

/// Coils packed as the contract and the wire carry them: eight to a byte,
/// the first in the least significant bit.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |acc, (i, b)| acc | (u8::from(*b) << i))).collect()
}

/// The first `n` coils of bytes packed so.
pub fn unpack_bits(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n.min(bytes.len() * 8)).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_and_their_errors() {
        let s = shape("t[0]", &json!({"tag": "v", "type": "32float", "functionCode": 4, "address": 10}), READS, true)
            .unwrap();
        assert_eq!((s.function_code, s.address, s.objects), (4, Address::One(10), 2));
        let err = |item: Value| shape("t[0]", &item, READS, true).unwrap_err().to_string();
        assert_eq!(
            err(json!({"tag": "v", "type": "16int", "functionCode": 6, "address": 1})),
            "t[0].functionCode: 6 does not fit here; expected one of [1, 2, 3, 4]"
        );
        assert_eq!(
            err(json!({"tag": "v", "type": "32int", "functionCode": 3, "address": 1, "objectsCount": 1})),
            "t[0].objectsCount: `32int` needs 2 registers, objectsCount is 1"
        );
        assert_eq!(err(json!({"tag": "v", "type": "16int", "functionCode": 3})), "t[0].address: required");
        assert_eq!(
            err(json!({"tag": "v", "type": "16int", "functionCode": 3, "address": "9-1"})),
            "t[0].address: `9-1`: the range ends (1) before it starts (9)"
        );
    }

    #[test]
    fn ranges_give_one_key_per_whole_value() {
        let item = json!({"tag": "u${unitId}_r${address}", "type": "32uint", "functionCode": 3, "address": "100-104"});
        let s = shape("", &item, READS, true).unwrap();
        assert_eq!(s.tags(7), [("u7_r100".to_owned(), 100), ("u7_r102".to_owned(), 102)]);
        assert_eq!(
            entry_keys(&json!({"tag": "c", "type": "bits", "functionCode": 1, "address": "0-1"}), 1),
            ["c_0", "c_1"]
        );
        let slave = json!({"timeseries": [item], "attributes": [{"tag": "s", "type": "string", "functionCode": 3,
            "address": 0, "objectsCount": 4}]});
        assert_eq!(reads("m.slaves[0]", &slave, 7).unwrap(), [(3, 0, 4), (3, 100, 2), (3, 102, 2)]);
    }

    #[test]
    fn coils_pack_lsb_first() {
        let bits = [true, false, true, true, false, false, false, false, true];
        assert_eq!(pack_bits(&bits), [0b0000_1101, 1]);
        assert_eq!(unpack_bits(&pack_bits(&bits), 9), bits);
    }
}
