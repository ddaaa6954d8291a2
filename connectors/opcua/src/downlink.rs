//! ThingsBoard's requests on the server: the downlink converter's reads,
//! writes and method calls carried out on the session, and the
//! connector-level `opcua_<method>` RPC.
//!
//! A request names its node as the configuration does ([`path`]): a
//! NodeId, a key of the device (its node from the table: `get` of
//! `temperature`), or a browse path from the device's node or from the
//! root; the contract's `Pump/Speed` form too. A path is resolved once
//! per session and kept.
//!
//! Writes are typed: a node's DataType and ValueRank are read once (and
//! kept) and the value cast to that Variant type, as a server checks it
//! (`"42"` to an Int16 node is `Int16(42)`, `70000` is refused there,
//! naming the range, rather than sent and refused by the server). A
//! method's InputArguments are read once and each argument cast the same
//! way; a wrong number of arguments is refused before the call. Where a
//! DataType is not one of OPC UA's built-in types (a structure, a type of
//! the server's own) the value is sent as its own type, as the Python
//! gateway sends it.
//!
//! Every message is answered with what the server said: the value read,
//! the value written, the method's outputs (a JSON array of Variants), each
//! with its status; a status that is not Good carries an `error` text in
//! the answer's metadata. A request that takes longer than `timeoutInMillis`
//! is answered `BadTimeout`. So the converter's reply says what happened
//! to each request; an attribute update (which ThingsBoard gets no reply
//! to) that failed is reported as the job's error, which the gateway logs.

use crate::path::{self, NodeRef};
use crate::resolve::{self, Limits, PathRequest, describe};
use opcua::client::Session;
use opcua::types::{
    Argument, Array, AttributeId, ByteString, CallMethodRequest, DataValue, DateTime, Guid, LocalizedText, NodeId,
    NumericRange, ReadValueId, TimestampsToReturn, UAString, Variant, VariantScalarTypeId, WriteValue,
};
use opcua::types::{QualifiedName, StatusCode};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tbgw_core::downlink::{Answered, DeviceJob, JobKind};
use tbgw_core::{DownlinkMessage, OpcuaRequest, OpcuaValue, RawUplink, Source, Value, now_ms};

/// A device of the table, as requests reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    pub node: NodeId,
    /// Its keys' nodes.
    pub keys: HashMap<Arc<str>, NodeId>,
}

/// A node's type, as a write to it must be.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Typed {
    /// `None`: not a built-in type (the value goes as its own).
    scalar: Option<VariantScalarTypeId>,
    array: bool,
}

/// What one session has learnt: paths resolved, types read.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    nodes: HashMap<(NodeId, String), NodeId>,
    types: HashMap<NodeId, Typed>,
    inputs: HashMap<NodeId, Vec<Typed>>,
}

/// Carries requests out on one session.
#[derive(Clone)]
pub(crate) struct Downlink {
    pub session: Arc<Session>,
    pub limits: Limits,
    pub namespaces: usize,
    pub timeout: Duration,
    pub cache: Arc<Mutex<Cache>>,
    pub devices: Arc<HashMap<Arc<str>, Device>>,
}

/// How one request ended.
struct Outcome {
    node: String,
    status: StatusCode,
    /// A JSON Variant, or a JSON array of them (a call's outputs).
    payload: Vec<u8>,
    error: Option<String>,
}

impl Outcome {
    fn failed(node: &str, status: StatusCode, error: impl Into<String>) -> Outcome {
        Outcome { node: node.to_owned(), status, payload: b"null".to_vec(), error: Some(error.into()) }
    }
}

impl Downlink {
    /// Answer a job: every message carried out, in order.
    pub async fn serve(self, job: DeviceJob) -> bool {
        let answered = self.answer(&job).await;
        let ok = answered.is_ok();
        let _ = job.reply.send(answered);
        ok
    }

    async fn answer(&self, job: &DeviceJob) -> Answered {
        let device = self.devices.get(job.device.as_str()).ok_or_else(|| {
            format!("device `{}` was not found on the server at the last scan: no node to send to", job.device)
        })?;
        let mut answers = Vec::with_capacity(job.messages.len());
        let mut failures = Vec::new();
        for m in &job.messages {
            let DownlinkMessage::Opcua(request) = m else {
                return Err(format!("the opcua connector cannot send a {} message", m.kind()));
            };
            let outcome = match tokio::time::timeout(self.timeout, self.carry_out(device, request)).await {
                Ok(o) => o,
                Err(_) => Outcome::failed(
                    target(request),
                    StatusCode::BadTimeout,
                    format!("no answer from the server in {:?}", self.timeout),
                ),
            };
            if !outcome.status.is_good() {
                failures.push(format!(
                    "{}: {}{}",
                    outcome.node,
                    describe(outcome.status),
                    outcome.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            }
            answers.push(raw(&job.device, outcome));
        }
        if matches!(job.kind, JobKind::AttributeUpdate) && !failures.is_empty() {
            return Err(failures.join("; "));
        }
        Ok(answers)
    }

    async fn carry_out(&self, device: &Device, request: &OpcuaRequest) -> Outcome {
        match request {
            OpcuaRequest::Read(node) => match self.locate(device, &device.node, node, true).await {
                Ok(id) => self.read(node, &id).await,
                Err(o) => o,
            },
            OpcuaRequest::Write { node, value } => match self.locate(device, &device.node, node, true).await {
                Ok(id) => self.write(node, &id, value).await,
                Err(o) => o,
            },
            OpcuaRequest::Call { object, method, arguments } => {
                let object_id = if object.is_empty() {
                    device.node.clone()
                } else {
                    match self.locate(device, &device.node, object, false).await {
                        Ok(id) => id,
                        Err(o) => return o,
                    }
                };
                match self.locate(device, &object_id, method, false).await {
                    Ok(method_id) => self.call(method, object_id, method_id, arguments).await,
                    Err(o) => o,
                }
            }
        }
    }

    /// The node `text` names, from `base`; keys of the device count when
    /// `keys`.
    async fn locate(&self, device: &Device, base: &NodeId, text: &str, keys: bool) -> Result<NodeId, Outcome> {
        let text = text.trim();
        let bare = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')).unwrap_or(text);
        if keys && let Some(id) = device.keys.get(bare) {
            return Ok(id.clone());
        }
        let r = path::request_ref(bare).map_err(|e| Outcome::failed(text, StatusCode::BadNodeIdInvalid, e))?;
        let NodeRef::Path { .. } = &r else {
            let NodeRef::Id(id) = r else { unreachable!("a NodeRef is an id or a path") };
            return Ok(id);
        };
        let cache_key = (base.clone(), bare.to_owned());
        if let Some(id) = self.lock().nodes.get(&cache_key) {
            return Ok(id.clone());
        }
        let request = PathRequest::of(&r, base);
        let found = resolve::resolve(&self.session, &self.limits, self.namespaces, &mut None, &[request])
            .await
            .map_err(|e| Outcome::failed(text, StatusCode::BadCommunicationError, e))?;
        match found.into_iter().next().flatten() {
            Some(id) => {
                self.lock().nodes.insert(cache_key, id.clone());
                Ok(id)
            }
            None => Err(Outcome::failed(text, StatusCode::BadNoMatch, format!("no node `{text}` from {base}"))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read(&self, text: &str, id: &NodeId) -> Outcome {
        match resolve::read(&self.session, &mut { self.limits }, std::slice::from_ref(id)).await {
            Ok(values) => {
                let value = values.into_iter().next().unwrap_or_default();
                let status = value.status.unwrap_or(StatusCode::Good);
                let payload = match &value.value {
                    Some(v) => resolve::json(&self.session, v),
                    None => b"null".to_vec(),
                };
                let error = (!status.is_good()).then(|| format!("reading {id}"));
                Outcome { node: id.to_string(), status, payload, error }
            }
            Err(e) => Outcome::failed(text, StatusCode::BadCommunicationError, e),
        }
    }

    async fn write(&self, text: &str, id: &NodeId, value: &Value) -> Outcome {
        let typed = match self.type_of(id).await {
            Ok(t) => t,
            Err(o) => return o,
        };
        let variant = match cast(value, typed) {
            Ok(v) => v,
            Err(e) => return Outcome::failed(&id.to_string(), StatusCode::BadTypeMismatch, e),
        };
        let write = WriteValue {
            node_id: id.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
            value: DataValue { value: Some(variant.clone()), ..Default::default() },
        };
        let status = match self.session.write(&[write]).await {
            Ok(statuses) => statuses.into_iter().next().unwrap_or(StatusCode::BadUnexpectedError),
            Err(e) => return Outcome::failed(text, e.status(), format!("writing {id}: {e}")),
        };
        let error = (!status.is_good()).then(|| format!("the server refused {variant:?} for {id}"));
        Outcome { node: id.to_string(), status, payload: resolve::json(&self.session, &variant), error }
    }

    /// The DataType and ValueRank of a variable, read once.
    async fn type_of(&self, id: &NodeId) -> Result<Typed, Outcome> {
        if let Some(t) = self.lock().types.get(id) {
            return Ok(*t);
        }
        let reads = [AttributeId::DataType, AttributeId::ValueRank].map(|a| ReadValueId {
            node_id: id.clone(),
            attribute_id: a as u32,
            ..Default::default()
        });
        let values =
            self.session.read(&reads, TimestampsToReturn::Neither, 0.0).await.map_err(|e| {
                Outcome::failed(&id.to_string(), e.status(), format!("reading the DataType of {id}: {e}"))
            })?;
        let data_type = match values.first().and_then(|v| v.value.as_ref()) {
            Some(Variant::NodeId(t)) => t.as_ref().clone(),
            _ => {
                let status = values.first().and_then(|v| v.status).unwrap_or(StatusCode::BadAttributeIdInvalid);
                return Err(Outcome::failed(&id.to_string(), status, format!("{id} has no DataType: not a variable")));
            }
        };
        let rank = match values.get(1).and_then(|v| v.value.as_ref()) {
            Some(Variant::Int32(r)) => *r,
            _ => -1,
        };
        let typed = Typed { scalar: scalar_type(&data_type), array: rank >= 1 };
        self.lock().types.insert(id.clone(), typed);
        Ok(typed)
    }

    /// A method's input arguments' types, read once (none: it takes none).
    async fn inputs_of(&self, method: &NodeId) -> Result<Vec<Typed>, Outcome> {
        if let Some(t) = self.lock().inputs.get(method) {
            return Ok(t.clone());
        }
        let request = PathRequest {
            start: method.clone(),
            elements: vec![path::Element { ns: Some(0), name: "InputArguments".into() }],
        };
        let failed = |e: String| Outcome::failed(&method.to_string(), StatusCode::BadCommunicationError, e);
        let found = resolve::resolve(&self.session, &self.limits, self.namespaces, &mut None, &[request])
            .await
            .map_err(failed)?;
        let mut inputs = Vec::new();
        if let Some(node) = found.into_iter().next().flatten() {
            let values = resolve::read(&self.session, &mut { self.limits }, &[node]).await.map_err(failed)?;
            if let Some(Variant::Array(a)) = values.first().and_then(|v| v.value.as_ref()) {
                for v in &a.values {
                    let Variant::ExtensionObject(o) = v else { continue };
                    if let Some(arg) = o.inner_as::<Argument>() {
                        inputs.push(Typed { scalar: scalar_type(&arg.data_type), array: arg.value_rank >= 1 });
                    }
                }
            }
        }
        self.lock().inputs.insert(method.clone(), inputs.clone());
        Ok(inputs)
    }

    async fn call(&self, text: &str, object: NodeId, method: NodeId, arguments: &[Value]) -> Outcome {
        let node = method.to_string();
        let inputs = match self.inputs_of(&method).await {
            Ok(i) => i,
            Err(o) => return o,
        };
        if inputs.len() != arguments.len() {
            let status = if arguments.len() < inputs.len() {
                StatusCode::BadArgumentsMissing
            } else {
                StatusCode::BadTooManyArguments
            };
            return Outcome::failed(
                &node,
                status,
                format!("method `{text}` takes {} arguments, got {}", inputs.len(), arguments.len()),
            );
        }
        let mut variants = Vec::with_capacity(arguments.len());
        for (i, (a, t)) in arguments.iter().zip(&inputs).enumerate() {
            match cast(a, *t) {
                Ok(v) => variants.push(v),
                Err(e) => {
                    return Outcome::failed(&node, StatusCode::BadTypeMismatch, format!("argument {}: {e}", i + 1));
                }
            }
        }
        let request = CallMethodRequest { object_id: object, method_id: method, input_arguments: Some(variants) };
        // `call_one` panics on an empty result list: take the first one here.
        let result = match self.session.call(vec![request]).await {
            Ok(results) => match results.into_iter().next() {
                Some(r) => r,
                None => return Outcome::failed(&node, StatusCode::BadUnexpectedError, "the server answered no result"),
            },
            Err(e) => return Outcome::failed(&node, e.status(), format!("calling `{text}`: {e}")),
        };
        let outputs: Vec<Vec<u8>> =
            result.output_arguments.iter().flatten().map(|v| resolve::json(&self.session, v)).collect();
        let mut payload = b"[".to_vec();
        payload.extend(outputs.join(&b","[..]));
        payload.push(b']');
        let mut error = None;
        if !result.status_code.is_good() {
            let bad: Vec<String> = result
                .input_argument_results
                .iter()
                .flatten()
                .enumerate()
                .filter(|(_, s)| !s.is_good())
                .map(|(i, s)| format!("argument {}: {s}", i + 1))
                .collect();
            error = Some(if bad.is_empty() { format!("method `{text}` failed") } else { bad.join(", ") });
        }
        Outcome { node, status: result.status_code, payload, error }
    }

    /// `opcua_<method>`: the method of that browse name called on every
    /// device's node with the request's `arguments`, answered as the Python
    /// gateway answers it: one entry per device, `{"result": ...,
    /// "device_name": ...}` or `{"error": ..., "device_name": ...}`.
    pub async fn connector_rpc(self, method: String, params: String) -> Result<String, String> {
        let params: Json = serde_json::from_str(&params).map_err(|e| format!("params are not JSON: {e}"))?;
        let arguments: Vec<Value> = match params.get("arguments") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let v = a.get("value").unwrap_or(a);
                    Value::from_json(v).map_err(|e| format!("arguments[{i}]: {e}"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("arguments: expected a list of {\"type\": ..., \"value\": ...}".into()),
        };
        let mut names: Vec<&Arc<str>> = self.devices.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let device = &self.devices[name];
            let call = async {
                match self.locate(device, &device.node, &method, false).await {
                    Ok(id) => self.call(&method, device.node.clone(), id, &arguments).await,
                    Err(o) => o,
                }
            };
            let outcome = tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| {
                Outcome::failed(&method, StatusCode::BadTimeout, format!("Timeout rpc has been reached for {name}"))
            });
            out.push(if outcome.status.is_good() {
                json!({"result": outputs(&outcome.payload), "device_name": name.as_ref()})
            } else {
                let why = format!("{}{}", outcome.status, outcome.error.map(|e| format!(": {e}")).unwrap_or_default());
                json!({"error": why, "device_name": name.as_ref()})
            });
        }
        Ok(Json::Array(out).to_string())
    }
}

/// A call's outputs as plain JSON: one value, a list of several, or null.
fn outputs(payload: &[u8]) -> Json {
    let Ok(Json::Array(items)) = serde_json::from_slice::<Json>(payload) else { return Json::Null };
    let mut plain: Vec<Json> = items
        .iter()
        .map(|v| match tbgw_opcua_converter::variant(v.to_string().as_bytes()) {
            Ok(Value::Json(text)) => serde_json::from_str(&text).unwrap_or(Json::String(text)),
            Ok(v) => v.to_json(),
            Err(_) => Json::Null,
        })
        .collect();
    match plain.len() {
        0 => Json::Null,
        1 => plain.remove(0),
        _ => Json::Array(plain),
    }
}

/// The node a request is about, as it names it (for an answer before the
/// node is found).
fn target(request: &OpcuaRequest) -> &str {
    match request {
        OpcuaRequest::Read(n) | OpcuaRequest::Write { node: n, .. } => n,
        OpcuaRequest::Call { method, .. } => method,
    }
}

fn raw(device: &str, o: Outcome) -> RawUplink {
    let mut metadata = Vec::new();
    if !o.status.is_good() {
        metadata.push(("status".to_owned(), o.status.sub_code().name().to_owned()));
    }
    if let Some(e) = o.error {
        metadata.push(("error".to_owned(), e));
    }
    RawUplink {
        source: Source::Opcua(OpcuaValue {
            node: o.node,
            status: o.status.bits(),
            source_time: None,
            server_time: None,
        }),
        device: Some(device.to_owned()),
        payload: o.payload,
        metadata,
        received_at: now_ms(),
    }
}

/// The Variant type of a DataType: OPC UA's built-in types and the
/// standard types derived from them; `None` for any other.
fn scalar_type(data_type: &NodeId) -> Option<VariantScalarTypeId> {
    if data_type.namespace != 0 {
        return None;
    }
    let opcua::types::Identifier::Numeric(n) = data_type.identifier else { return None };
    match n {
        // Boolean .. LocalizedText, not BaseDataType's own (24: any).
        1..=21 => VariantScalarTypeId::try_from(n).ok(),
        // Enumeration and the standard enumerations are Int32 on the wire.
        29 | 256 | 257 | 307 | 302 | 851 | 852 => Some(VariantScalarTypeId::Int32),
        // Duration.
        290 => Some(VariantScalarTypeId::Double),
        // UtcTime, Date.
        294 | 293 => Some(VariantScalarTypeId::DateTime),
        // LocaleId, NumericRange, Time.
        295 | 291 | 292 => Some(VariantScalarTypeId::String),
        // IntegerId, Counter, Index.
        288 | 289 | 17588 => Some(VariantScalarTypeId::UInt32),
        // Image types, ApplicationInstanceCertificate.
        30 | 2000..=2003 | 311 => Some(VariantScalarTypeId::ByteString),
        _ => None,
    }
}

/// `value` as a Variant of type `t` (see the module's doc).
fn cast(value: &Value, t: Typed) -> Result<Variant, String> {
    if let Value::Json(text) = value
        && let Ok(Json::Array(items)) = serde_json::from_str::<Json>(text)
    {
        let values: Vec<Variant> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let v = Value::from_json(item).map_err(|e| format!("[{i}]: {e}"))?;
                scalar(&v, t.scalar).map_err(|e| format!("[{i}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let ty = match (t.scalar, values.first()) {
            (Some(ty), _) => ty,
            (None, Some(first)) => match first.type_id() {
                opcua::types::VariantTypeId::Scalar(s) => s,
                _ => VariantScalarTypeId::Variant,
            },
            (None, None) => VariantScalarTypeId::Variant,
        };
        let array = Array::new(ty, values).map_err(|e| format!("an array of {ty}: {e:?}"))?;
        return Ok(Variant::Array(Box::new(array)));
    }
    if t.array {
        return Err(format!("the node holds an array: expected a JSON array, got {}", shown(value)));
    }
    scalar(value, t.scalar)
}

fn shown(value: &Value) -> String {
    match value {
        Value::Text(s) => format!("`{s}`"),
        other => other.to_json().to_string(),
    }
}

/// One value as a Variant of the type `ty`, or of its own type (`None`).
fn scalar(value: &Value, ty: Option<VariantScalarTypeId>) -> Result<Variant, String> {
    use VariantScalarTypeId as T;
    let Some(ty) = ty else { return Ok(guess(value)) };
    let bad = || format!("{} is not a {ty}", shown(value));
    let int = |min: i128, max: i128| -> Result<i128, String> {
        let n: i128 = match value {
            Value::Int(i) => i128::from(*i),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e19 => *f as i128,
            Value::Bool(b) => i128::from(*b),
            Value::Text(s) => s.trim().parse::<i128>().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if n < min || n > max {
            return Err(format!("{n} is out of the range of a {ty} ({min}..={max})"));
        }
        Ok(n)
    };
    let float = || -> Result<f64, String> {
        match value {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            Value::Text(s) => s.trim().parse::<f64>().map_err(|_| bad()),
            _ => Err(bad()),
        }
    };
    let text = || -> String {
        match value {
            Value::Text(s) => s.clone(),
            other => other.to_json().to_string(),
        }
    };
    Ok(match ty {
        T::Boolean => Variant::Boolean(match value {
            Value::Bool(b) => *b,
            Value::Int(0) => false,
            Value::Int(1) => true,
            Value::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        }),
        T::SByte => Variant::SByte(int(i8::MIN.into(), i8::MAX.into())? as i8),
        T::Byte => Variant::Byte(int(0, u8::MAX.into())? as u8),
        T::Int16 => Variant::Int16(int(i16::MIN.into(), i16::MAX.into())? as i16),
        T::UInt16 => Variant::UInt16(int(0, u16::MAX.into())? as u16),
        T::Int32 => Variant::Int32(int(i32::MIN.into(), i32::MAX.into())? as i32),
        T::UInt32 => Variant::UInt32(int(0, u32::MAX.into())? as u32),
        T::Int64 => Variant::Int64(int(i64::MIN.into(), i64::MAX.into())? as i64),
        T::UInt64 => Variant::UInt64(int(0, u64::MAX.into())? as u64),
        T::Float => Variant::Float(float()? as f32),
        T::Double => Variant::Double(float()?),
        T::String => Variant::String(UAString::from(text())),
        T::LocalizedText => Variant::LocalizedText(Box::new(LocalizedText::new("", &text()))),
        T::QualifiedName => Variant::QualifiedName(Box::new(QualifiedName::new(0, text().as_str()))),
        T::DateTime => Variant::DateTime(Box::new(
            DateTime::from_str(text().trim()).map_err(|_| format!("{} is not an RFC 3339 time", shown(value)))?,
        )),
        T::Guid => Variant::Guid(Box::new(Guid::from_str(text().trim()).map_err(|_| bad())?)),
        T::NodeId => Variant::NodeId(Box::new(NodeId::from_str(text().trim()).map_err(|_| bad())?)),
        T::ByteString => {
            let bytes =
                tbgw_core::unhex(text().trim().as_bytes()).map_err(|_| format!("{} is not hex bytes", shown(value)))?;
            Variant::ByteString(ByteString::from(bytes))
        }
        _ => return Err(format!("tbgw does not write {ty} values")),
    })
}

/// A value as its own type, for a node of a type that is not built in:
/// text that reads as a boolean or a number is one, as the Python gateway
/// guesses it.
fn guess(value: &Value) -> Variant {
    match value {
        Value::Bool(b) => Variant::Boolean(*b),
        Value::Int(i) => Variant::Int64(*i),
        Value::Float(f) => Variant::Double(*f),
        Value::Json(j) => Variant::String(UAString::from(j.as_str())),
        Value::Text(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") {
                Variant::Boolean(t.eq_ignore_ascii_case("true"))
            } else if let Ok(i) = t.parse::<i64>() {
                Variant::Int64(i)
            } else if t.contains('.')
                && let Ok(f) = t.parse::<f64>()
            {
                Variant::Double(f)
            } else {
                Variant::String(UAString::from(s.as_str()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(scalar: VariantScalarTypeId) -> Typed {
        Typed { scalar: Some(scalar), array: false }
    }

    #[test]
    fn values_are_cast_to_the_nodes_type() {
        use VariantScalarTypeId as T;
        assert_eq!(cast(&Value::Text("42".into()), t(T::Int16)), Ok(Variant::Int16(42)));
        assert_eq!(cast(&Value::Int(7), t(T::Double)), Ok(Variant::Double(7.0)));
        assert_eq!(cast(&Value::Float(3.0), t(T::UInt32)), Ok(Variant::UInt32(3)));
        assert_eq!(cast(&Value::Text("TRUE".into()), t(T::Boolean)), Ok(Variant::Boolean(true)));
        assert_eq!(cast(&Value::Int(5), t(T::String)), Ok(Variant::String("5".into())));
        let err = cast(&Value::Int(70000), t(T::Int16)).unwrap_err();
        assert_eq!(err, "70000 is out of the range of a Int16 (-32768..=32767)");
        assert_eq!(cast(&Value::Float(2.5), t(T::Int32)).unwrap_err(), "2.5 is not a Int32");
        assert_eq!(cast(&Value::Text("warm".into()), t(T::Boolean)).unwrap_err(), "`warm` is not a Boolean");
        let arr = cast(&Value::Json("[1, 2.5]".into()), Typed { scalar: Some(T::Double), array: true }).unwrap();
        let Variant::Array(a) = arr else { panic!("an array: {arr:?}") };
        assert_eq!(a.values, vec![Variant::Double(1.0), Variant::Double(2.5)]);
        assert!(cast(&Value::Int(1), Typed { scalar: Some(T::Double), array: true }).unwrap_err().contains("array"));
    }

    #[test]
    fn a_type_not_built_in_takes_the_value_as_it_is() {
        assert_eq!(cast(&Value::Text("12".into()), Typed { scalar: None, array: false }), Ok(Variant::Int64(12)));
        assert_eq!(cast(&Value::Text("1.5".into()), Typed { scalar: None, array: false }), Ok(Variant::Double(1.5)));
        assert_eq!(
            cast(&Value::Text("on".into()), Typed { scalar: None, array: false }),
            Ok(Variant::String("on".into()))
        );
        assert_eq!(scalar_type(&NodeId::new(0, 29u32)), Some(VariantScalarTypeId::Int32));
        assert_eq!(scalar_type(&NodeId::new(0, 2u32)), Some(VariantScalarTypeId::SByte));
        assert_eq!(scalar_type(&NodeId::new(2, 6u32)), None);
    }
}
