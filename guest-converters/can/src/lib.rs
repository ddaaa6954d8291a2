//! The built-in `can` converters' logic, in plain Rust, configured with the
//! ThingsBoard IoT Gateway's `can.json` (its `devices[]`; the bus keys are
//! the connector's and ignored here):
//!
//! - [`UplinkConverter`]: a frame becomes one update per device with every
//!   item ([`tbgw_can_items`]) the frame carries, each decoded by its
//!   `value` spec ([`codec`]) and passed through its `expression`.
//! - [`DownlinkConverter`]: a shared attribute update of an
//!   `attributeUpdates[]` entry, or an RPC of a `serverSideRpc[]` entry (or
//!   any RPC with `enableUnknownRpc`, or the reserved `set`), becomes a
//!   frame: `dataInHex`, or `dataBefore` + the value (the params' `value`,
//!   or the `dataExpression` of the params) + `dataAfter`.
//!
//! `expression` and `dataExpression` are [`tbgw_expr`] expressions, parsed
//! when the converter is created: the Python gateway's `eval` of them (with
//! the module's globals unless `strictEval`) is gone, and `strictEval` is
//! accepted and changes nothing. An uplink expression may read `value` and
//! `can_data`; a downlink one the params' keys (an attribute update's
//! `value`).
//!
//! Where the Python gateway fails an RPC at every call over a fault of the
//! configuration (a `dataInHex` that is not hex, say), this refuses the
//! configuration when it is loaded, naming the field.

pub mod codec;

use codec::{Encode, Encoding, ValueSpec};
use serde_json::{Map, Value as Json};
use tbgw_can_items::{self as items, ConfigError, FrameId, Section};
use tbgw_data::config::{self as cfg, Obj};
use tbgw_data::{
    CanFrame, CanSend, ConvertedMessage, DeviceUpdate, DownlinkMessage, DownlinkRequest, Dropped, Entry, Key,
    RawUplink, RpcAnswer, Source, Telemetry, Value,
};
use tbgw_expr::data::{expression, to_value};
use tbgw_expr::{Expr, Val};

/// The names an uplink `expression` may read.
pub const UPLINK_NAMES: &[&str] = &["value", "can_data"];

/// One item, ready to decode.
#[derive(Debug, Clone)]
struct Decoder {
    device: usize,
    section: Section,
    key: Key,
    spec: ValueSpec,
    expression: Option<Expr>,
}

#[derive(Debug, Clone)]
struct DeviceInfo {
    name: String,
    device_type: Option<String>,
}

/// The uplink converter: frames to device updates.
#[derive(Debug)]
pub struct UplinkConverter {
    devices: Vec<DeviceInfo>,
    decoders: Vec<Decoder>,
    routes: items::Routes,
}

impl UplinkConverter {
    pub fn new(text: &str) -> Result<UplinkConverter, ConfigError> {
        let doc = cfg::parse_document(text)?;
        let schema = items::read(&doc)?;
        let mut decoders = Vec::with_capacity(schema.items.len());
        for item in &schema.items {
            let mut o = Obj::new(item.path.clone(), item.entry)?;
            let spec = match o.get("value") {
                Some(v) => ValueSpec::parse(&o.field("value"), v)?,
                None => return Err(o.missing("value")),
            };
            let expression = match o.opt_str("expression")? {
                Some(text) => expression(&o.field("expression"), text, Some(UPLINK_NAMES))?,
                None => None,
            };
            decoders.push(Decoder {
                device: item.device,
                section: item.section,
                key: Key::new(item.key),
                spec,
                expression,
            });
        }
        let devices = schema
            .devices
            .iter()
            .map(|d| DeviceInfo { name: d.name.to_owned(), device_type: d.device_type.map(str::to_owned) })
            .collect();
        Ok(UplinkConverter { devices, decoders, routes: schema.routes })
    }

    /// A frame from the connector: its device (when it says one) gets the
    /// values of its items in the frame; without a device, every device
    /// with items in the frame.
    pub fn convert_message(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        let Source::Can(frame) = &msg.source else {
            return Err("the `can` converter takes CAN frames; this message is not one".to_owned());
        };
        self.convert(frame, msg.device.as_deref(), &msg.payload)
    }

    pub fn convert(&self, frame: &CanFrame, device: Option<&str>, data: &[u8]) -> Result<ConvertedMessage, String> {
        let device = match device {
            Some(name) => Some(
                self.devices
                    .iter()
                    .position(|d| d.name == name)
                    .ok_or_else(|| format!("no device of this converter is named `{name}`"))?,
            ),
            None => None,
        };
        let mut out = ConvertedMessage::default();
        // (device, attributes, values), in the order their items come.
        let mut updates: Vec<(usize, Vec<Entry>, Vec<Entry>)> = Vec::new();
        for i in self.routes.items(frame.id, frame.extended, data) {
            let d = &self.decoders[i];
            if device.is_some_and(|want| want != d.device) {
                continue;
            }
            let value = d.spec.decode(data).and_then(|v| match &d.expression {
                None => to_value(v, "can_data"),
                Some(e) => {
                    let can_data = Val::Bytes(data.to_vec());
                    let result = e.eval(&|name| match name {
                        "value" => Some(v.clone()),
                        "can_data" => Some(can_data.clone()),
                        _ => None,
                    });
                    result.map_err(|err| format!("expression: {err}")).and_then(|v| to_value(v, "can_data"))
                }
            });
            let value = match value {
                Ok(v) => v,
                Err(reason) => {
                    out.dropped.push(Dropped { key: d.key.as_str().to_owned(), reason });
                    continue;
                }
            };
            let slot = match updates.iter().position(|(dev, _, _)| *dev == d.device) {
                Some(s) => s,
                None => {
                    updates.push((d.device, Vec::new(), Vec::new()));
                    updates.len() - 1
                }
            };
            let entry = Entry { key: d.key.clone(), value };
            match d.section {
                Section::Attributes => updates[slot].1.push(entry),
                Section::Timeseries => updates[slot].2.push(entry),
            }
        }
        for (dev, attributes, values) in updates {
            let info = &self.devices[dev];
            let telemetry = if values.is_empty() { Vec::new() } else { vec![Telemetry { ts: None, values }] };
            out.updates.push(DeviceUpdate {
                device: info.name.clone(),
                device_type: info.device_type.clone(),
                attributes,
                telemetry,
            });
        }
        Ok(out)
    }
}

/// How one `attributeUpdates[]` or `serverSideRpc[]` entry (or an RPC's
/// params, where they stand for one) makes a frame.
#[derive(Debug, Clone)]
struct Writer {
    /// `None` only where the RPC's params may give it (`overrideRpcConfig`).
    frame: Option<FrameId>,
    hex: Option<Vec<u8>>,
    before: Vec<u8>,
    after: Vec<u8>,
    encode: Encode,
    expression: Option<Expr>,
}

/// The keys of an entry that say how its frame is made: the ones an RPC's
/// params may override (`overrideRpcConfig`), as in the Python gateway.
const WRITER_KEYS: &[&str] = &[
    "nodeId",
    "isExtendedId",
    "isFd",
    "bitrateSwitch",
    "dataLength",
    "dataByteorder",
    "dataSigned",
    "dataExpression",
    "dataEncoding",
    "dataBefore",
    "dataAfter",
    "dataInHex",
];

impl Writer {
    /// Read the writer keys of `o`; `node_optional` where a missing
    /// `nodeId` may come from the params.
    fn read(o: &mut Obj, node_optional: bool) -> Result<Writer, ConfigError> {
        let frame = if node_optional && o.get("nodeId").is_none_or(Json::is_null) {
            for k in ["isExtendedId", "isFd", "bitrateSwitch"] {
                o.opt_bool(k)?;
            }
            None
        } else {
            Some(items::frame_id(o)?)
        };
        let hex_field = |o: &mut Obj, k: &'static str| -> Result<Option<Vec<u8>>, ConfigError> {
            let field = o.field(k);
            match o.opt_str(k)? {
                Some(t) if !t.trim().is_empty() => items::hex_bytes(&field, t).map(Some),
                _ => Ok(None),
            }
        };
        let hex = hex_field(o, "dataInHex")?;
        let before = hex_field(o, "dataBefore")?.unwrap_or_default();
        let after = hex_field(o, "dataAfter")?.unwrap_or_default();
        let length = match o.get("dataLength") {
            None | Some(Json::Null) => 1,
            Some(v) => items::small_uint(&o.field("dataLength"), v, 64)? as usize,
        };
        let big_endian = items::byte_order(&o.field("dataByteorder"), o.opt_str("dataByteorder")?)?;
        let signed = o.opt_bool("dataSigned")?.unwrap_or(false);
        let encoding = Encoding::parse(&o.field("dataEncoding"), o.opt_str("dataEncoding")?)?;
        let expression = match o.opt_str("dataExpression")? {
            Some(t) => expression(&o.field("dataExpression"), t, None)?,
            None => None,
        };
        let w =
            Writer { frame, hex, before, after, encode: Encode { length, big_endian, signed, encoding }, expression };
        if let (Some(f), Some(h)) = (&w.frame, &w.hex) {
            items::check_length(f, h.len()).map_err(|e| ConfigError::at(o.field("dataInHex"), e))?;
        }
        Ok(w)
    }

    /// The frame for `data` (the params, or an attribute's `{"value": v}`).
    fn send(&self, data: &Map<String, Json>) -> Result<CanSend, String> {
        let frame = self.frame.ok_or("no nodeId: give it in the entry or the RPC's params")?;
        let payload = match (&self.hex, data.get("dataInHex")) {
            (Some(h), _) => h.clone(),
            (None, Some(Json::String(t))) if !t.trim().is_empty() => {
                items::hex_bytes("dataInHex", t).map_err(|e| format!("params.dataInHex: {}", e.message))?
            }
            _ => {
                let value = match &self.expression {
                    Some(e) => {
                        e.eval(&|name| data.get(name).and_then(json_val)).map_err(|e| format!("dataExpression: {e}"))?
                    }
                    None => match data.get("value") {
                        Some(v) => json_val(v).ok_or_else(|| format!("the value {v} cannot be written to a frame"))?,
                        None => return Err("no `value` in the params, and no dataExpression to make one".to_owned()),
                    },
                };
                let mut out = self.before.clone();
                out.extend(self.encode.bytes(&value)?);
                out.extend(&self.after);
                out
            }
        };
        items::check_length(&frame, payload.len())?;
        Ok(CanSend {
            frame: CanFrame {
                id: frame.id,
                extended: frame.extended,
                rtr: false,
                fd: frame.fd,
                brs: frame.brs,
                esi: false,
            },
            payload,
            response: None,
        })
    }
}

/// A JSON value as an expression variable: numbers, text, booleans and
/// null (objects and arrays have no counterpart).
fn json_val(v: &Json) -> Option<Val> {
    match v {
        Json::Null => Some(Val::None),
        Json::Bool(b) => Some(Val::Bool(*b)),
        Json::Number(n) => n.as_i64().map(Val::Int).or_else(|| n.as_f64().map(Val::Float)),
        Json::String(s) => Some(Val::Str(s.clone())),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct DownDevice {
    name: String,
    unknown_rpc: bool,
    override_rpc: bool,
    attributes: Vec<(String, Writer)>,
    /// Each entry with its JSON, to merge an RPC's params into.
    rpcs: Vec<(String, Writer, Json)>,
}

/// The downlink converter: attribute updates and RPCs to frames.
#[derive(Debug)]
pub struct DownlinkConverter {
    devices: Vec<DownDevice>,
}

impl DownlinkConverter {
    pub fn new(text: &str) -> Result<DownlinkConverter, ConfigError> {
        let doc = cfg::parse_document(text)?;
        let schema = items::read(&doc)?;
        let mut devices = Vec::new();
        for d in &schema.devices {
            let mut o = Obj::new(d.path.clone(), d.object)?;
            let unknown_rpc = o.opt_bool("enableUnknownRpc")?.unwrap_or(false);
            let override_rpc = unknown_rpc || o.opt_bool("overrideRpcConfig")?.unwrap_or(false);
            let mut attributes = Vec::new();
            if o.get("attributeUpdates").is_some_and(|v| !v.is_null()) {
                for (path, entry) in cfg::array(&mut o, "attributeUpdates")? {
                    let mut e = Obj::new(path, entry)?;
                    let name = match (e.opt_str("attributeOnThingsBoard")?, e.opt_str("attribute")?) {
                        (Some(n), _) | (None, Some(n)) => n.to_owned(),
                        (None, None) => return Err(e.missing("attributeOnThingsBoard")),
                    };
                    let w = Writer::read(&mut e, false)?;
                    e.allow(&["response", "strictEval"]);
                    e.finish()?;
                    attributes.push((name, w));
                }
            }
            let mut rpcs = Vec::new();
            if o.get("serverSideRpc").is_some_and(|v| !v.is_null()) {
                for (path, entry) in cfg::array(&mut o, "serverSideRpc")? {
                    let mut e = Obj::new(path, entry)?;
                    let method = e.req_str("method")?.to_owned();
                    let w = Writer::read(&mut e, override_rpc)?;
                    e.opt_bool("response")?;
                    e.allow(&["strictEval"]);
                    e.finish()?;
                    rpcs.push((method, w, entry.clone()));
                }
            }
            devices.push(DownDevice { name: d.name.to_owned(), unknown_rpc, override_rpc, attributes, rpcs });
        }
        Ok(DownlinkConverter { devices })
    }

    fn device(&self, name: &str) -> Result<&DownDevice, String> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| format!("no device of this converter is named `{name}`"))
    }

    pub fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        let sends = match request {
            DownlinkRequest::Rpc(r) => vec![self.rpc(&r.device, &r.method, &r.params)?],
            DownlinkRequest::AttributeUpdate(u) => self.attribute_update(&u.device, &u.entries)?,
            DownlinkRequest::AttributeResponse(_) => {
                return Err("CAN devices make no attribute requests: nothing to answer".into());
            }
        };
        Ok(sends.into_iter().map(DownlinkMessage::Can).collect())
    }

    /// ThingsBoard's reply once the frame is on the bus: `{"success":
    /// true}`, or for the reserved `set` `{"result": {"success": true}}`,
    /// as the Python gateway replies.
    pub fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        Ok(if answer.request.method == "set" {
            r#"{"result":{"success":true}}"#.to_owned()
        } else {
            r#"{"success":true}"#.to_owned()
        })
    }

    /// One frame per key of the update that has an `attributeUpdates[]`
    /// entry.
    pub fn attribute_update(&self, device: &str, entries: &[Entry]) -> Result<Vec<CanSend>, String> {
        let d = self.device(device)?;
        let mut out = Vec::new();
        for e in entries {
            for (_, w) in d.attributes.iter().filter(|(name, _)| name == e.key.as_str()) {
                let value = match &e.value {
                    Value::Bool(b) => Json::Bool(*b),
                    Value::Int(i) => Json::from(*i),
                    Value::Float(x) => Json::from(*x),
                    Value::Text(s) => Json::String(s.clone()),
                    Value::Json(j) => serde_json::from_str(j).map_err(|err| format!("`{}`: {err}", e.key))?,
                };
                let data = Map::from_iter([("value".to_owned(), value)]);
                out.push(w.send(&data).map_err(|err| format!("`{}`: {err}", e.key))?);
            }
        }
        if out.is_empty() {
            let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            return Err(format!("no attributeUpdates entry of `{device}` is for {keys:?}"));
        }
        Ok(out)
    }

    /// The frame of an RPC: its `serverSideRpc[]` entry with the params as
    /// data (an object; any other params are its `value`), merged into the
    /// entry with `overrideRpcConfig`; any method with `enableUnknownRpc`
    /// (the params are the whole entry then); the reserved `set`, whose
    /// params are `key=value;` pairs of an entry (`nodeId=64;dataInHex=0102;`).
    pub fn rpc(&self, device: &str, method: &str, params: &str) -> Result<CanSend, String> {
        let d = self.device(device)?;
        let params: Json = serde_json::from_str(params).unwrap_or_else(|_| Json::String(params.to_owned()));
        let configured = d.rpcs.iter().find(|(m, _, _)| m == method);
        if method == "set" && configured.is_none() {
            let Json::String(text) = &params else {
                return Err("`set` takes its params as text: nodeId=<id>;dataInHex=<hex>; (or value=...)".to_owned());
            };
            let entry = set_params(text);
            return writer_of(&entry)?.send(&entry);
        }
        let data = match params {
            Json::Object(o) => o,
            Json::Null => Map::new(),
            other => Map::from_iter([("value".to_owned(), other)]),
        };
        match configured {
            Some((_, w, entry)) if !d.override_rpc => w.send(&data),
            Some((_, _, entry)) => {
                let mut merged = entry.as_object().cloned().unwrap_or_default();
                for k in WRITER_KEYS {
                    if let Some(v) = data.get(*k) {
                        merged.insert((*k).to_owned(), v.clone());
                    }
                }
                merged.remove("method");
                merged.remove("response");
                merged.remove("strictEval");
                writer_of(&merged)?.send(&data)
            }
            None if d.unknown_rpc => {
                let entry: Map<String, Json> = data
                    .iter()
                    .filter(|(k, _)| WRITER_KEYS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                writer_of(&entry)?.send(&data)
            }
            None => Err(format!("`{device}` has no serverSideRpc entry for `{method}` (and enableUnknownRpc is off)")),
        }
    }
}

/// A writer from JSON made at call time (params merged into an entry).
fn writer_of(entry: &Map<String, Json>) -> Result<Writer, String> {
    let doc = Json::Object(entry.clone());
    let mut o = Obj::new("params", &doc).map_err(|e| e.to_string())?;
    let w = Writer::read(&mut o, false).map_err(|e| e.to_string())?;
    Ok(w)
}

/// `nodeId=64;isExtendedId=true;dataInHex=0102;` as an entry: numbers and
/// booleans as JSON reads them, the rest text.
fn set_params(text: &str) -> Map<String, Json> {
    text.split(';')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty())
        .map(|(k, v)| {
            let v = v.trim();
            let value = match serde_json::from_str::<Json>(v) {
                Ok(j @ (Json::Number(_) | Json::Bool(_))) => j,
                _ => Json::String(v.to_owned()),
            };
            (k.trim().to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests;
