//! The CAN item schema, as the ThingsBoard IoT Gateway's `can.json` writes
//! a device's `attributes[]` and `timeseries[]` entries: which frames a key
//! is read from (`nodeId`, `isExtendedId`, and the `command` bytes that
//! tell one kind of frame on an id from another), the flags of the frames
//! it is polled with (`isFd`, `bitrateSwitch`), and its `polling`. Plain
//! data, no I/O, no decoding: the CAN connector routes frames and polls with
//! it, and the `can` converter finds a frame's items with it before it
//! decodes their `value` and evaluates their `expression`.
//!
//! ```json
//! {"devices": [{"name": "Car", "type": "car", "sendDataOnlyOnChange": false,
//!   "timeseries": [{"key": "rpm", "nodeId": 1918, "isExtendedId": true, "command": "2:2:big:48059",
//!                   "value": "4:2:big:int", "expression": "value / 4",
//!                   "polling": {"type": "always", "period": 5, "dataInHex": "aaaa bbbb aaaa bbbb"}}]}]}
//! ```
//!
//! Routing is on the pair (id, extended): a standard and an extended frame
//! with the same number are different frames (the Python gateway keys on
//! the number alone, so they collide). On one id, every entry with a
//! `command` must place it alike (start, length, order), or the
//! configuration is refused naming both entries (the Python gateway keeps
//! whichever it parsed first and drops the other silently); an entry with
//! no `command` takes every frame of its id, beside the entries whose
//! command matches (in the Python gateway it disables the commands of the
//! entries parsed before it: its own sample's `rpm` never matches).

use serde_json::Value;
use std::collections::HashMap;
pub use tbgw_data::ConfigError;
use tbgw_data::config::{self, Obj};

/// The largest standard (11-bit) and extended (29-bit) identifiers.
pub const MAX_STANDARD_ID: u32 = 0x7FF;
pub const MAX_EXTENDED_ID: u32 = 0x1FFF_FFFF;

/// The keys of a device object, every one of which some part of tbgw reads.
pub const DEVICE_KEYS: &[&str] = &[
    "name",
    "type",
    "sendDataOnlyOnChange",
    "enableUnknownRpc",
    "overrideRpcConfig",
    "strictEval",
    "attributes",
    "timeseries",
    "attributeUpdates",
    "serverSideRpc",
    "converters",
    "reportStrategy",
];

/// Which section an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Attributes,
    Timeseries,
}

/// Bytes `start..start + length` of a frame's data, read as an unsigned
/// integer in the given order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Field {
    pub start: usize,
    pub length: usize,
    pub big_endian: bool,
}

impl Field {
    /// Its value in `data`; `None` when `data` is too short to hold it.
    pub fn read(&self, data: &[u8]) -> Option<u64> {
        let bytes = data.get(self.start..self.start.checked_add(self.length)?)?;
        let fold = |acc: u64, b: &u8| (acc << 8) | u64::from(*b);
        Some(if self.big_endian { bytes.iter().fold(0, fold) } else { bytes.iter().rev().fold(0, fold) })
    }

    fn describe(&self) -> String {
        let order = if self.big_endian { "big" } else { "little" };
        format!("bytes {}..{} {order}-endian", self.start, self.start + self.length)
    }
}

/// An entry's `command`: which frames on its id are its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub field: Field,
    pub value: u64,
}

/// An identifier and the flags a frame is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameId {
    pub id: u32,
    pub extended: bool,
    /// CAN FD (`isFd`).
    pub fd: bool,
    /// CAN FD's faster data phase (`bitrateSwitch`).
    pub brs: bool,
}

/// An entry's `polling`: the frame that asks the device for the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polling {
    /// `type: always` (every `period`) rather than `once` (once a connection).
    pub always: bool,
    /// `period`, seconds in the file (fractions allowed; the Python
    /// gateway's default is 1 s).
    pub period_ms: u64,
    /// `dataInHex`.
    pub data: Vec<u8>,
}

/// One `attributes[]` or `timeseries[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    /// `devices[0].timeseries[1]`, for messages.
    pub path: String,
    /// Its device, an index into [`Schema::devices`].
    pub device: usize,
    pub section: Section,
    pub key: &'a str,
    pub frame: FrameId,
    pub command: Option<Command>,
    pub polling: Option<Polling>,
    /// The whole entry: the converter reads its `value` and `expression`.
    pub entry: &'a Value,
}

/// One `devices[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Device<'a> {
    pub path: String,
    pub name: &'a str,
    pub device_type: Option<&'a str>,
    /// The whole object: the converter reads its `attributeUpdates`,
    /// `serverSideRpc` and flags from it.
    pub object: &'a Value,
}

/// Every device and item of a `can.json`, and the routing of frames to
/// items.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema<'a> {
    pub devices: Vec<Device<'a>>,
    pub items: Vec<Item<'a>>,
    pub routes: Routes,
}

/// Read the `devices` of `doc` (the other keys are the connector's).
pub fn read(doc: &Value) -> Result<Schema<'_>, ConfigError> {
    let mut root = Obj::new("", doc)?;
    let mut devices = Vec::new();
    let mut items = Vec::new();
    let list = match root.get("devices") {
        None => return Err(ConfigError::at("devices", "required: the devices on the bus")),
        Some(_) => config::array(&mut root, "devices")?,
    };
    if list.is_empty() {
        return Err(ConfigError::at("devices", "no device: the connector would read nothing"));
    }
    for (path, value) in list {
        let index = devices.len();
        let mut o = Obj::new(path.clone(), value)?;
        let name = o.req_str("name")?;
        if name.trim().is_empty() {
            return Err(ConfigError::at(o.field("name"), "empty: ThingsBoard needs a device name"));
        }
        if let Some(other) = devices.iter().find(|d: &&Device| d.name == name) {
            return Err(ConfigError::at(
                o.field("name"),
                format!("`{name}` is also the name of {}: requests could not tell them apart", other.path),
            ));
        }
        let device_type = o.opt_str("type")?;
        for flag in ["sendDataOnlyOnChange", "enableUnknownRpc", "overrideRpcConfig", "strictEval"] {
            o.opt_bool(flag)?;
        }
        for (section, key) in [(Section::Attributes, "attributes"), (Section::Timeseries, "timeseries")] {
            if o.get(key).is_none_or(Value::is_null) {
                continue;
            }
            for (entry_path, entry) in config::array(&mut o, key)? {
                items.push(item(entry_path, index, section, entry)?);
            }
        }
        o.allow(DEVICE_KEYS);
        o.finish()?;
        devices.push(Device { path, name, device_type, object: value });
    }
    let routes = Routes::new(&items)?;
    Ok(Schema { devices, items, routes })
}

fn item(path: String, device: usize, section: Section, entry: &Value) -> Result<Item<'_>, ConfigError> {
    let mut o = Obj::new(path.clone(), entry)?;
    let key = o.req_str("key")?;
    let frame = frame_id(&mut o)?;
    let command = match o.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(command(&o.field("command"), v)?),
    };
    let polling = match o.get("polling") {
        None | Some(Value::Null) => None,
        Some(v) => Some(polling(&o.field("polling"), v, frame)?),
    };
    // Read by the converter.
    o.allow(&["value", "expression", "reportStrategy"]);
    if o.get("value").is_none() {
        return Err(o.missing("value"));
    }
    o.finish()?;
    Ok(Item { path, device, section, key, frame, command, polling, entry })
}

/// `nodeId`, `isExtendedId`, `isFd` and `bitrateSwitch` of `o`: a frame's
/// identity and flags, every problem by field. `nodeId` is a number, or
/// text in decimal or `0x` hex.
pub fn frame_id(o: &mut Obj) -> Result<FrameId, ConfigError> {
    let extended = o.opt_bool("isExtendedId")?.unwrap_or(false);
    let fd = o.opt_bool("isFd")?.unwrap_or(false);
    let brs = o.opt_bool("bitrateSwitch")?.unwrap_or(false);
    let field = o.field("nodeId");
    let id = match o.get("nodeId") {
        None | Some(Value::Null) => return Err(o.missing("nodeId")),
        Some(v) => config::uint_or_hex(v).ok_or_else(|| {
            ConfigError::at(field.clone(), format!("expected a CAN identifier (a number, or `0x` hex text), found {v}"))
        })?,
    };
    let max = if extended { MAX_EXTENDED_ID } else { MAX_STANDARD_ID };
    if id > u64::from(max) {
        let hint = if extended { "" } else { "; an extended (29-bit) identifier needs `isExtendedId: true`" };
        return Err(ConfigError::at(
            field,
            format!("{id} (0x{id:X}) is beyond the largest identifier 0x{max:X}{hint}"),
        ));
    }
    if brs && !fd {
        return Err(ConfigError::at(o.field("bitrateSwitch"), "a bit rate switch needs a CAN FD frame (`isFd: true`)"));
    }
    Ok(FrameId { id: u32::try_from(id).unwrap_or(max), extended, fd, brs })
}

/// A byte order as the file writes it (`big`, `little`; `big` when
/// absent or empty).
pub fn byte_order(path: &str, text: Option<&str>) -> Result<bool, ConfigError> {
    match text.map(str::trim) {
        None | Some("") | Some("big") => Ok(true),
        Some("little") => Ok(false),
        Some(other) => Err(ConfigError::at(path, format!("`{other}` is not a byte order; expected big or little"))),
    }
}

/// A number of bytes or a position written as a number or as text.
pub fn small_uint(path: &str, v: &Value, max: u64) -> Result<u64, ConfigError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|n| *n <= max)
        .ok_or_else(|| ConfigError::at(path, format!("expected a whole number from 0 to {max}, found {v}")))
}

/// A `command`: the text form `start:length[:order]:value` (`"2:2:big:48059"`),
/// or `{"start", "length", "byteorder", "value"}`.
pub fn command(path: &str, v: &Value) -> Result<Command, ConfigError> {
    let (start, length, order, value) = match v {
        Value::String(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            let bad = || {
                ConfigError::at(
                    path,
                    format!("`{text}` is not a command; expected start:length:order:value, e.g. `2:2:big:48059`"),
                )
            };
            let (start, length, order, value) = match parts.as_slice() {
                [s, l, v] => (*s, *l, None, *v),
                [s, l, o, v] => (*s, *l, Some(*o), *v),
                _ => return Err(bad()),
            };
            let num = |t: &str, max: u64| t.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(bad);
            (num(start, 63)?, num(length, 8)?, order, num(value, u64::MAX)?)
        }
        Value::Object(_) => {
            let mut o = Obj::new(path, v)?;
            let at = |k: &str| format!("{path}.{k}");
            fn req<'a>(o: &mut Obj<'a>, k: &'static str) -> Result<&'a Value, ConfigError> {
                o.get(k).ok_or_else(|| o.missing(k))
            }
            let start = small_uint(&at("start"), req(&mut o, "start")?, 63)?;
            let length = small_uint(&at("length"), req(&mut o, "length")?, 8)?;
            let order = o.opt_str("byteorder")?;
            let value = small_uint(&at("value"), req(&mut o, "value")?, u64::MAX)?;
            o.finish()?;
            (start, length, order, value)
        }
        other => {
            return Err(ConfigError::at(path, format!("expected text or an object, found {}", config::kind(other))));
        }
    };
    if length == 0 {
        return Err(ConfigError::at(path, "a command of no bytes"));
    }
    let field = Field { start: start as usize, length: length as usize, big_endian: byte_order(path, order)? };
    if length < 8 && value >> (8 * length) != 0 {
        return Err(ConfigError::at(path, format!("{value} does not fit in the command's {length} byte(s)")));
    }
    Ok(Command { field, value })
}

/// Data in hex, as Python's `bytearray.fromhex` reads it: byte pairs,
/// whitespace between pairs (not inside one).
pub fn hex_bytes(path: &str, text: &str) -> Result<Vec<u8>, ConfigError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let pair = (chars[i].to_digit(16), chars.get(i + 1).and_then(|c| c.to_digit(16)));
        match pair {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            (None, _) => {
                return Err(ConfigError::at(path, format!("`{}` at position {i} is not a hex digit", chars[i])));
            }
            (Some(_), _) => {
                return Err(ConfigError::at(
                    path,
                    format!("hex digit `{}` at position {i} is not one of a pair (bytes are two digits)", chars[i]),
                ));
            }
        }
        i += 2;
    }
    Ok(out)
}

/// Check a frame's data length against its kind: at most 8 bytes in a
/// classic frame, 64 in a CAN FD frame (whose controller pads a length
/// between its DLC sizes, 12, 16, 20, 24, 32, 48, up to the next).
pub fn check_length(frame: &FrameId, len: usize) -> Result<(), String> {
    if frame.fd && len > 64 {
        return Err(format!("{len} bytes do not fit a CAN FD frame (at most 64)"));
    }
    if !frame.fd && len > 8 {
        return Err(format!("{len} bytes do not fit a classic CAN frame (at most 8; CAN FD needs `isFd: true`)"));
    }
    Ok(())
}

fn polling(path: &str, v: &Value, frame: FrameId) -> Result<Polling, ConfigError> {
    let mut o = Obj::new(path, v)?;
    let always = match o.opt_str("type")? {
        None | Some("always") => true,
        Some("once") => false,
        Some(other) => {
            return Err(ConfigError::at(
                o.field("type"),
                format!("`{other}` is not a polling type; expected once or always"),
            ));
        }
    };
    let period_ms = match o.get("period") {
        None | Some(Value::Null) => 1000,
        Some(v) => seconds_ms(&o.field("period"), v)?,
    };
    if always && period_ms == 0 {
        return Err(ConfigError::at(o.field("period"), "a period of 0 would flood the bus"));
    }
    let field = o.field("dataInHex");
    let data = hex_bytes(&field, o.req_str("dataInHex")?)?;
    check_length(&frame, data.len()).map_err(|e| ConfigError::at(field, e))?;
    // Flags of the polled frame are the entry's; the Python gateway copies
    // them here, so accept them, and the key (its log's).
    o.allow(&["key", "nodeId", "isExtendedId", "isFd", "bitrateSwitch"]);
    o.finish()?;
    Ok(Polling { always, period_ms, data })
}

/// A duration in seconds (a number, fractions allowed, or numeric text),
/// in ms.
pub fn seconds_ms(path: &str, v: &Value) -> Result<u64, ConfigError> {
    let secs = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s.is_finite() && (0.0..=31_536_000.0).contains(&s) => Ok((s * 1000.0).round() as u64),
        _ => Err(ConfigError::at(path, format!("expected seconds from 0 to 31536000, found {v}"))),
    }
}

/// The frames of one id, and the items they feed.
#[derive(Debug, Clone, PartialEq, Default)]
struct Node {
    /// Where this id's frames carry their command, and the entry that said so.
    layout: Option<(Field, String)>,
    by_command: HashMap<u64, Vec<usize>>,
    /// Items without a command: every frame of the id.
    any: Vec<usize>,
}

/// Frames to the items they carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Routes {
    nodes: HashMap<(u32, bool), Node>,
}

impl Routes {
    fn new(items: &[Item]) -> Result<Routes, ConfigError> {
        let mut nodes: HashMap<(u32, bool), Node> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let node = nodes.entry((item.frame.id, item.frame.extended)).or_default();
            let Some(c) = item.command else {
                node.any.push(i);
                continue;
            };
            match &node.layout {
                Some((field, first)) if *field != c.field => {
                    let kind = if item.frame.extended { "extended" } else { "standard" };
                    return Err(ConfigError::at(
                        format!("{}.command", item.path),
                        format!(
                            "{} here, but {first}.command puts the command of {kind} id {} (0x{:X}) at {}: \
                             the frames of one id carry their command in one place",
                            c.field.describe(),
                            item.frame.id,
                            item.frame.id,
                            field.describe()
                        ),
                    ));
                }
                Some(_) => {}
                None => node.layout = Some((c.field, item.path.clone())),
            }
            node.by_command.entry(c.value).or_default().push(i);
        }
        Ok(Routes { nodes })
    }

    /// The items (indices into [`Schema::items`]) that a frame with `id`,
    /// `extended` and `data` carries: those of its id without a command,
    /// then those whose command it has.
    pub fn items(&self, id: u32, extended: bool, data: &[u8]) -> impl Iterator<Item = usize> + '_ {
        let node = self.nodes.get(&(id, extended));
        let any = node.into_iter().flat_map(|n| n.any.iter().copied());
        let commanded = node
            .and_then(|n| {
                let (field, _) = n.layout.as_ref()?;
                n.by_command.get(&field.read(data)?)
            })
            .into_iter()
            .flat_map(|items| items.iter().copied());
        any.chain(commanded)
    }

    /// Whether a frame carries any item.
    pub fn matches(&self, id: u32, extended: bool, data: &[u8]) -> bool {
        self.items(id, extended, data).next().is_some()
    }

    /// Every (id, extended) some item is read from, for kernel filters.
    pub fn ids(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        self.nodes.keys().copied()
    }
}

#[cfg(test)]
mod tests;
