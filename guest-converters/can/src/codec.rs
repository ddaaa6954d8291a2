//! Bytes of a frame to a value and back, as the Python gateway's
//! `BytesCanUplinkConverter` and `BytesCanDownlinkConverter` do them.
//!
//! Uplink: a `value` spec, the text form
//! `start:length[:order]:type[:signed|encoding]` (`"4:2:big:int"`,
//! `"0:-1:string:utf-8"`, `"4:1:int"`) or `{"start", "length",
//! "byteorder", "type", "signed", "encoding"}`; length `-1` is the rest of
//! the frame. Types: `bool`/`boolean` (the first byte, non-zero), `int`/
//! `long` (any length up to 8 bytes, signed or not), `float` (the first 4
//! bytes of the field as an IEEE single), `double` (the first 8), `string`
//! (decoded: ascii by default, utf-8, latin-1), `raw` (lower-case hex).
//!
//! Where the Python gateway silently reads a shorter slice of a frame that
//! is too short for the spec (and so sends 0 or a cut string), this is an
//! error naming the bytes: a value that was not in the frame is not sent.
//!
//! Downlink: `dataBefore` + the value + `dataAfter`, the value a bool (one
//! byte), an integer (`dataLength` bytes, `dataByteorder`, signed when
//! `dataSigned` or negative), a float (4 bytes, single precision, as the
//! Python gateway packs every float) or text (`dataEncoding`).

use tbgw_can_items::{ConfigError, byte_order, small_uint};
use tbgw_data::config::{Obj, kind};
use tbgw_expr::Val;

/// A text encoding the converters read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Ascii,
    Utf8,
    Latin1,
}

impl Encoding {
    /// An encoding as Python names it (any case, `-` or `_`).
    pub fn parse(path: &str, name: Option<&str>) -> Result<Encoding, ConfigError> {
        let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else { return Ok(Encoding::Ascii) };
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "ascii" | "us-ascii" => Ok(Encoding::Ascii),
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "latin-1" | "latin1" | "iso-8859-1" | "iso8859-1" => Ok(Encoding::Latin1),
            _ => Err(ConfigError::at(
                path,
                format!("`{name}` is not an encoding tbgw has; expected ascii, utf-8 or latin-1"),
            )),
        }
    }

    pub fn decode(self, bytes: &[u8]) -> Result<String, String> {
        match self {
            Encoding::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                Some(i) => Err(format!("byte 0x{:02x} at position {i} is not ASCII", bytes[i])),
                None => Ok(bytes.iter().map(|b| char::from(*b)).collect()),
            },
            Encoding::Utf8 => String::from_utf8(bytes.to_vec()).map_err(|e| format!("not UTF-8: {e}")),
            Encoding::Latin1 => Ok(bytes.iter().map(|b| char::from(*b)).collect()),
        }
    }

    pub fn encode(self, text: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Utf8 => Ok(text.as_bytes().to_vec()),
            Encoding::Ascii | Encoding::Latin1 => {
                let limit = if self == Encoding::Ascii { 0x7F } else { 0xFF };
                text.chars()
                    .map(|c| {
                        u8::try_from(u32::from(c)).ok().filter(|b| u32::from(*b) <= limit).ok_or_else(|| {
                            let name = if self == Encoding::Ascii { "ASCII" } else { "latin-1" };
                            format!("`{c}` cannot be written in {name}")
                        })
                    })
                    .collect()
            }
        }
    }
}

/// What a value's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int { signed: bool },
    Float,
    Double,
    Text(Encoding),
    Raw,
}

/// Where a value is in a frame and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSpec {
    pub start: usize,
    /// `None`: to the end of the frame (`-1`).
    pub length: Option<usize>,
    pub big_endian: bool,
    pub kind: Kind,
}

impl ValueSpec {
    /// Read a `value` (at `path`).
    pub fn parse(path: &str, v: &serde_json::Value) -> Result<ValueSpec, ConfigError> {
        match v {
            serde_json::Value::String(text) => Self::parse_text(path, text),
            serde_json::Value::Object(_) => {
                let mut o = Obj::new(path, v)?;
                let start = match o.get("start") {
                    Some(s) => small_uint(&o.field("start"), s, 63)?,
                    None => return Err(o.missing("start")),
                };
                let length = match o.get("length") {
                    Some(serde_json::Value::Number(n)) if n.as_i64() == Some(-1) => None,
                    Some(serde_json::Value::String(s)) if s.trim() == "-1" => None,
                    Some(l) => Some(small_uint(&o.field("length"), l, 64)?),
                    None => return Err(o.missing("length")),
                };
                let big_endian = byte_order(&o.field("byteorder"), o.opt_str("byteorder")?)?;
                let type_field = o.field("type");
                let ty = o.req_str("type")?;
                let signed = o.opt_bool("signed")?.unwrap_or(false);
                let encoding = Encoding::parse(&o.field("encoding"), o.opt_str("encoding")?)?;
                o.finish()?;
                let kind = kind_of(&type_field, ty, signed, encoding)?;
                Self::checked(
                    path,
                    ValueSpec { start: start as usize, length: length.map(|l| l as usize), big_endian, kind },
                )
            }
            other => {
                Err(ConfigError::at(path, format!("expected a value spec (text or an object), found {}", kind(other))))
            }
        }
    }

    fn parse_text(path: &str, text: &str) -> Result<ValueSpec, ConfigError> {
        let bad = |why: &str| {
            ConfigError::at(
                path,
                format!("`{text}` is not a value spec ({why}); expected start:length:order:type, e.g. `4:2:big:int`"),
            )
        };
        let parts: Vec<&str> = text.split(':').collect();
        let (start, length, rest) = match parts.as_slice() {
            [s, l, rest @ ..] if !rest.is_empty() => (*s, *l, rest),
            _ => return Err(bad("too few parts")),
        };
        let start: usize = start.parse().ok().filter(|s| *s <= 63).ok_or_else(|| bad("the start is not 0-63"))?;
        let length = match length {
            "-1" => None,
            l => Some(l.parse::<usize>().ok().filter(|l| *l <= 64).ok_or_else(|| bad("the length is not -1 or 0-64"))?),
        };
        // [order:]type[:option]; the order may be empty (`4:1::int`).
        let (order, ty, option) = match rest {
            [t] => ("", *t, None),
            [a, b] if is_type(a) => ("", *a, Some(*b)),
            [o, t] => (*o, *t, None),
            [o, t, opt] => (*o, *t, Some(*opt)),
            _ => return Err(bad("too many parts")),
        };
        if !is_type(ty) {
            return Err(bad(&format!("`{ty}` is not a type: bool, boolean, int, long, float, double, string or raw")));
        }
        let big_endian = byte_order(path, Some(order))?;
        let signed = option == Some("signed");
        let is_int = matches!(ty, "int" | "long");
        if let Some(opt) = option.filter(|o| is_int && *o != "signed" && *o != "unsigned") {
            return Err(bad(&format!("`{opt}` after an integer type: expected signed")));
        }
        let encoding = if matches!(ty, "string") { Encoding::parse(path, option)? } else { Encoding::Ascii };
        let kind = kind_of(path, ty, signed, encoding)?;
        Self::checked(path, ValueSpec { start, length, big_endian, kind })
    }

    fn checked(path: &str, spec: ValueSpec) -> Result<ValueSpec, ConfigError> {
        let need = match spec.kind {
            Kind::Float => 4,
            Kind::Double => 8,
            _ => 0,
        };
        match (spec.kind, spec.length) {
            (Kind::Int { .. }, Some(l)) if l > 8 => {
                Err(ConfigError::at(path, format!("an integer of {l} bytes: tbgw's integers are at most 8 bytes")))
            }
            (Kind::Float | Kind::Double, Some(l)) if l < need => Err(ConfigError::at(
                path,
                format!("a {} needs {need} bytes; the spec gives it {l}", if need == 4 { "float" } else { "double" }),
            )),
            _ => Ok(spec),
        }
    }

    /// The value in `data` (a frame's bytes).
    pub fn decode(&self, data: &[u8]) -> Result<Val, String> {
        let short =
            |end: usize| format!("the frame has {} bytes; the value is bytes {}..{end}", data.len(), self.start);
        if self.kind == Kind::Bool {
            return data.get(self.start).map(|b| Val::Bool(*b != 0)).ok_or_else(|| short(self.start + 1));
        }
        let end = match self.length {
            Some(l) => self.start + l,
            None => data.len().max(self.start),
        };
        let bytes = data.get(self.start..end).ok_or_else(|| short(end))?;
        let ordered = |n: usize| -> Vec<u8> {
            let mut b = bytes[..n].to_vec();
            if !self.big_endian {
                b.reverse();
            }
            b
        };
        Ok(match self.kind {
            // (Taken above: a bool is one byte whatever the length.)
            Kind::Bool => Val::Bool(bytes.first().is_some_and(|b| *b != 0)),
            Kind::Int { signed } => {
                if bytes.len() > 8 {
                    return Err(format!("{} bytes do not fit a 64-bit integer", bytes.len()));
                }
                let be = ordered(bytes.len());
                let raw = be.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                let bits = 8 * be.len() as u32;
                if signed && bits > 0 && bits < 64 && raw >> (bits - 1) & 1 == 1 {
                    Val::Int((raw | (u64::MAX << bits)) as i64)
                } else if signed {
                    Val::Int(raw as i64)
                } else {
                    Val::Int(i64::try_from(raw).map_err(|_| format!("{raw} is beyond a 64-bit signed integer"))?)
                }
            }
            Kind::Float => {
                let b =
                    bytes.get(..4).ok_or_else(|| format!("a float needs 4 bytes, the value has {}", bytes.len()))?;
                let a = [b[0], b[1], b[2], b[3]];
                let x = if self.big_endian { f32::from_be_bytes(a) } else { f32::from_le_bytes(a) };
                Val::Float(f64::from(x))
            }
            Kind::Double => {
                let b =
                    bytes.get(..8).ok_or_else(|| format!("a double needs 8 bytes, the value has {}", bytes.len()))?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Val::Float(if self.big_endian { f64::from_be_bytes(a) } else { f64::from_le_bytes(a) })
            }
            Kind::Text(e) => Val::Str(e.decode(bytes)?),
            Kind::Raw => Val::Str(tbgw_data::hex(bytes)),
        })
    }
}

fn is_type(t: &str) -> bool {
    matches!(t, "bool" | "boolean" | "int" | "long" | "float" | "double" | "string" | "raw")
}

fn kind_of(path: &str, ty: &str, signed: bool, encoding: Encoding) -> Result<Kind, ConfigError> {
    Ok(match ty {
        "bool" | "boolean" => Kind::Bool,
        "int" | "long" => Kind::Int { signed },
        "float" => Kind::Float,
        "double" => Kind::Double,
        "string" => Kind::Text(encoding),
        "raw" => Kind::Raw,
        other => {
            return Err(ConfigError::at(
                path,
                format!("`{other}` is not a type: bool, boolean, int, long, float, double, string or raw"),
            ));
        }
    })
}

/// How a downlink value becomes bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encode {
    /// `dataLength`: bytes of an integer (default 1).
    pub length: usize,
    pub big_endian: bool,
    pub signed: bool,
    pub encoding: Encoding,
}

impl Encode {
    /// The bytes of `value`.
    pub fn bytes(&self, value: &Val) -> Result<Vec<u8>, String> {
        Ok(match value {
            Val::Bool(b) => vec![u8::from(*b)],
            Val::Int(i) => {
                let signed = self.signed || *i < 0;
                let bits = 8 * self.length as u32;
                let fits = if bits >= 64 {
                    signed || *i >= 0
                } else if signed {
                    let half = 1i128 << (bits - 1);
                    (-half..half).contains(&i128::from(*i))
                } else {
                    (0..1i128 << bits).contains(&i128::from(*i))
                };
                if self.length == 0 || !fits {
                    let sign = if signed { "signed" } else { "unsigned" };
                    return Err(format!("{i} does not fit in {} byte(s), {sign} (dataLength)", self.length));
                }
                let full = i.to_be_bytes();
                let mut out: Vec<u8> = if self.length <= 8 {
                    full[8 - self.length..].to_vec()
                } else {
                    let fill = if *i < 0 { 0xFF } else { 0 };
                    std::iter::repeat_n(fill, self.length - 8).chain(full).collect()
                };
                if !self.big_endian {
                    out.reverse();
                }
                out
            }
            Val::Float(x) => {
                let f = *x as f32;
                if x.is_finite() && !f.is_finite() {
                    return Err(format!("{x} is beyond a single-precision float"));
                }
                if self.big_endian { f.to_be_bytes().to_vec() } else { f.to_le_bytes().to_vec() }
            }
            Val::Str(s) => self.encoding.encode(s)?,
            other => return Err(format!("a {} cannot be written to a frame", other.type_name())),
        })
    }
}
