//! The one `bindgen!` over `wit/` (both contract versions), and the two
//! directions of the contract as implementations of [`Contract`]: how to
//! call a guest, and how its types map to the data model's.
//!
//! The host world imports and exports every interface of both versions, so
//! the contract's types are generated once per version; a component only
//! has to export one direction of one version, which [`Contract::indices`]
//! looks up (0.2 first).
//!
//! **0.2** is the contract as `wit/converter.wit` writes it. Uplink inputs
//! are lowered from the caller's messages without copying their payloads;
//! results come with the batch's key table, each key turned into one shared
//! [`Key`] that every entry naming it clones.
//!
//! **0.1** (`wit/0.1.0/converter.wit`) is served unchanged. What it cannot
//! say is adapted here: a 0.2 source it lacks becomes its nearest 0.1 form
//! with the rest in metadata (an MQTT message's QoS as `qos`, the device as
//! `device`, a BLE address as `address`, ...); its downlink messages are
//! MQTT publishes (their `target` the topic, their metadata `qos`,
//! `retain`, `response-topic`, `response-timeout-ms`, `response-qos`), the
//! only kind a 0.1 downlink component could serve; it has no `reply`, so an
//! RPC is answered with [`RpcAnswer::plain_reply`]; answers to attribute
//! requests, which 0.1 did not have, fail with the reason.

use crate::host::HostState;
use tbgw_core as data;
use tbgw_core::{Direction, Key, RpcAnswer};
use wasmtime::Store;
use wasmtime::component::{
    ComponentExportIndex, ComponentType, Func, Instance, InstancePre, Lower, ResourceAny, TypedFunc,
};

wasmtime::component::bindgen!({
    path: ["../../wit", "../../wit/0.1.0"],
    inline: "
        package tbgw:host;
        world host {
            import tbgw:converter/log@0.2.0;
            import tbgw:converter/log@0.1.0;
            export tbgw:converter/uplink@0.2.0;
            export tbgw:converter/downlink@0.2.0;
            export tbgw:converter/uplink@0.1.0;
            export tbgw:converter/downlink@0.1.0;
        }
    ",
    world: "tbgw:host/host",
});

use exports::tbgw::converter0_1_0 as x1;
use exports::tbgw::converter0_2_0 as x2;
use tbgw::converter0_1_0::types as w1;
use tbgw::converter0_2_0::types as w2;

/// The contract version this host implements (and writes converters for).
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Every contract version this host serves, newest first (`major.minor`:
/// patch versions are compatible).
pub const CONTRACT_VERSIONS: &[&str] = &["0.2", "0.1"];
/// The package of the contract.
pub const CONTRACT_PACKAGE: &str = "tbgw:converter";

/// A guest's answer to `create`: the converter, or the config error.
pub type Created = Result<ResourceAny, (Option<String>, String)>;

mod sealed {
    pub trait Sealed {}
}

/// One direction of the converter contract. Implemented by [`Uplink`] and
/// [`Downlink`] only.
pub trait Contract: sealed::Sealed + Send + Sync + Sized + 'static {
    /// Which world a component must implement.
    const DIRECTION: Direction;
    /// What a converter takes.
    type Input: Send + Sync;
    /// What it gives back for one input.
    type Output: Send;
    #[doc(hidden)]
    type Indices: Clone + Send + Sync + 'static;
    #[doc(hidden)]
    type Guest: Send + 'static;

    /// The interface's name in the package (`uplink`).
    fn interface() -> &'static str {
        match Self::DIRECTION {
            Direction::Uplink => "uplink",
            Direction::Downlink => "downlink",
        }
    }

    #[doc(hidden)]
    fn indices(pre: &InstancePre<HostState>) -> wasmtime::Result<Self::Indices>;
    #[doc(hidden)]
    fn load(
        indices: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Guest>;
    #[doc(hidden)]
    fn create(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Created>;
    #[doc(hidden)]
    fn convert(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        converter: ResourceAny,
        batch: &[Self::Input],
    ) -> wasmtime::Result<Vec<Result<Self::Output, String>>>;
    /// Clean up a result the host cannot pass on as it is (uplink: NaN and
    /// invalid JSON values are dropped); returns its size and how many values
    /// it reports as dropped.
    #[doc(hidden)]
    fn sanitize(output: &mut Self::Output) -> (usize, usize);
}

/// Device data to ThingsBoard data: the `uplink-converter` world.
#[derive(Debug, Clone, Copy)]
pub struct Uplink;

/// ThingsBoard requests to device messages, and devices' answers to
/// ThingsBoard's replies: the `downlink-converter` world.
#[derive(Debug, Clone, Copy)]
pub struct Downlink;

impl sealed::Sealed for Uplink {}
impl sealed::Sealed for Downlink {}

/// A contract export of `pre`'s component: its index, by interface and
/// version family (`0.2`), whatever the patch version.
fn export_of(pre: &InstancePre<HostState>, interface: &str, family: &str) -> Option<ComponentExportIndex> {
    let component = pre.component();
    let engine = pre.engine();
    let name = component.component_type().exports(engine).map(|(n, _)| n.to_owned()).find(|name| {
        crate::component::parse_contract_export(name)
            .is_some_and(|(d, v)| d.to_string() == interface && version_family(&v) == family)
    })?;
    component.get_export_index(None, &name)
}

/// Whether this host serves components built against contract `version`.
pub fn is_supported(version: &str) -> bool {
    CONTRACT_VERSIONS.contains(&version_family(version))
}

/// `0.2.1` → `0.2`.
pub(crate) fn version_family(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

fn method(
    pre: &InstancePre<HostState>,
    iface: &ComponentExportIndex,
    name: &str,
) -> wasmtime::Result<ComponentExportIndex> {
    pre.component().get_export_index(Some(iface), name).ok_or_else(|| wasmtime::format_err!("no `{name}` export"))
}

// ----- Uplink -----

/// `raw-uplink` (0.2) lowered from the caller's message without copying
/// its payload and metadata first (the generated type owns them).
#[derive(ComponentType, Lower)]
#[component(record)]
struct RawUplinkRef<'a> {
    #[component(name = "source")]
    source: w2::Source,
    #[component(name = "device")]
    device: Option<&'a str>,
    #[component(name = "payload")]
    payload: &'a [u8],
    #[component(name = "metadata")]
    metadata: &'a [(String, String)],
    #[component(name = "received-at")]
    received_at: i64,
}

/// `raw-uplink` as 0.1 has it.
#[derive(ComponentType, Lower)]
#[component(record)]
struct RawUplinkRefV1<'a> {
    #[component(name = "source")]
    source: w1::Source,
    #[component(name = "payload")]
    payload: &'a [u8],
    #[component(name = "metadata")]
    metadata: &'a [(String, String)],
    #[component(name = "received-at")]
    received_at: i64,
}

type UplinkResults = (w2::UplinkResults,);
type UplinkResultsV1 = (Vec<Result<w1::UplinkOutput, w1::ConvertError>>,);

#[doc(hidden)]
#[derive(Clone)]
pub enum UplinkIndices {
    V2 { generated: x2::uplink::GuestIndices, convert: ComponentExportIndex },
    V1 { generated: x1::uplink::GuestIndices, convert: ComponentExportIndex },
}

#[doc(hidden)]
pub enum UplinkGuest {
    /// `convert` is `[method]converter.convert`, type-checked with the
    /// borrowed parameter types.
    V2 {
        generated: x2::uplink::Guest,
        convert: Func,
    },
    V1 {
        generated: x1::uplink::Guest,
        convert: Func,
    },
}

impl Contract for Uplink {
    const DIRECTION: Direction = Direction::Uplink;
    type Input = data::RawUplink;
    type Output = data::ConvertedMessage;
    type Indices = UplinkIndices;
    type Guest = UplinkGuest;

    fn indices(pre: &InstancePre<HostState>) -> wasmtime::Result<Self::Indices> {
        if let Some(iface) = export_of(pre, "uplink", "0.2") {
            let generated = x2::uplink::GuestIndices::new(pre)?;
            return Ok(UplinkIndices::V2 { generated, convert: method(pre, &iface, "[method]converter.convert")? });
        }
        let iface = export_of(pre, "uplink", "0.1").ok_or_else(|| wasmtime::format_err!("no uplink export"))?;
        let generated = x1::uplink::GuestIndices::new(pre)?;
        Ok(UplinkIndices::V1 { generated, convert: method(pre, &iface, "[method]converter.convert")? })
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Guest> {
        Ok(match indices {
            UplinkIndices::V2 { generated, convert } => {
                let generated = generated.load(&mut *store, instance)?;
                let convert = *instance
                    .get_typed_func::<(ResourceAny, &[RawUplinkRef]), UplinkResults>(&mut *store, convert)?
                    .func();
                UplinkGuest::V2 { generated, convert }
            }
            UplinkIndices::V1 { generated, convert } => {
                let generated = generated.load(&mut *store, instance)?;
                let convert = *instance
                    .get_typed_func::<(ResourceAny, &[RawUplinkRefV1]), UplinkResultsV1>(&mut *store, convert)?
                    .func();
                UplinkGuest::V1 { generated, convert }
            }
        })
    }

    fn create(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Created> {
        Ok(match guest {
            UplinkGuest::V2 { generated, .. } => {
                generated.converter().call_create(store, config)?.map_err(|e| (e.field, e.message))
            }
            UplinkGuest::V1 { generated, .. } => {
                generated.converter().call_create(store, config)?.map_err(|e| (e.field, e.message))
            }
        })
    }

    fn convert(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        converter: ResourceAny,
        batch: &[Self::Input],
    ) -> wasmtime::Result<Vec<Result<Self::Output, String>>> {
        match guest {
            UplinkGuest::V2 { convert, .. } => {
                let batch: Vec<RawUplinkRef> = batch
                    .iter()
                    .map(|m| RawUplinkRef {
                        source: source_v2(&m.source),
                        device: m.device.as_deref(),
                        payload: &m.payload,
                        metadata: &m.metadata,
                        received_at: m.received_at,
                    })
                    .collect();
                // SAFETY: `load` type-checked this function with exactly these types.
                let convert =
                    unsafe { TypedFunc::<(ResourceAny, &[RawUplinkRef]), UplinkResults>::new_unchecked(*convert) };
                let (results,) = convert.call(&mut *store, (converter, &batch))?;
                Ok(results_v2(results, &mut store.data_mut().keys)?)
            }
            UplinkGuest::V1 { convert, .. } => {
                let (sources, metadata): (Vec<_>, Vec<_>) = batch.iter().map(v1_parts).unzip();
                let batch: Vec<RawUplinkRefV1> = batch
                    .iter()
                    .zip(sources)
                    .zip(&metadata)
                    .map(|((m, source), metadata)| RawUplinkRefV1 {
                        source,
                        payload: &m.payload,
                        metadata: metadata.as_deref().unwrap_or(&m.metadata),
                        received_at: m.received_at,
                    })
                    .collect();
                // SAFETY: as above.
                let convert =
                    unsafe { TypedFunc::<(ResourceAny, &[RawUplinkRefV1]), UplinkResultsV1>::new_unchecked(*convert) };
                let (results,) = convert.call(store, (converter, &batch))?;
                Ok(results.into_iter().map(|r| r.map(converted_v1).map_err(|e| e.message)).collect())
            }
        }
    }

    fn sanitize(output: &mut Self::Output) -> (usize, usize) {
        let mut size = 0;
        let dropped = &mut output.dropped;
        output.updates.retain_mut(|u| {
            if u.device.is_empty() {
                dropped.push(data::Dropped {
                    key: "device".into(),
                    reason: "the converter gave an empty device name".into(),
                });
                return false;
            }
            size += u.device.len() + u.device_type.as_ref().map_or(0, String::len);
            size += sanitize_entries(&mut u.attributes, dropped);
            for t in &mut u.telemetry {
                size += 8 + sanitize_entries(&mut t.values, dropped);
            }
            true
        });
        output.requests.retain(|r| {
            let empty = r.device().is_empty();
            if empty {
                dropped.push(data::Dropped {
                    key: "device".into(),
                    reason: "the converter gave a device request without a device name".into(),
                });
            }
            size += r.device().len();
            !empty
        });
        (size + dropped.iter().map(|d| d.key.len() + d.reason.len()).sum::<usize>(), dropped.len())
    }
}

/// Drop what ThingsBoard cannot take (non-finite floats, invalid JSON);
/// returns the size of what is left.
fn sanitize_entries(entries: &mut Vec<data::Entry>, dropped: &mut Vec<data::Dropped>) -> usize {
    let mut size = 0;
    entries.retain(|e| {
        let reason = match &e.value {
            data::Value::Float(f) if !f.is_finite() => Some(format!("{f} has no JSON form")),
            data::Value::Json(s) => serde_json::from_str::<serde::de::IgnoredAny>(s)
                .err()
                .map(|err| format!("the converter gave invalid JSON: {err}")),
            _ => None,
        };
        match reason {
            Some(reason) => {
                dropped.push(data::Dropped { key: e.key.to_string(), reason });
                false
            }
            None => {
                size += e.key.len()
                    + match &e.value {
                        data::Value::Text(s) | data::Value::Json(s) => s.len(),
                        _ => 8,
                    };
                true
            }
        }
    });
    size
}

fn source_v2(source: &data::Source) -> w2::Source {
    match source {
        data::Source::Mqtt(m) => {
            w2::Source::Mqtt(w2::MqttMessage { topic: m.topic.clone(), qos: m.qos, retain: m.retain })
        }
        data::Source::Registers(r) => w2::Source::Registers(w2::RegisterBlock {
            unit_id: r.unit_id,
            function_code: r.function_code,
            address: r.address,
            count: r.count,
        }),
        data::Source::Opcua(o) => w2::Source::Opcua(w2::OpcuaValue {
            node: o.node.clone(),
            status: o.status,
            source_time: o.source_time,
            server_time: o.server_time,
        }),
        data::Source::Characteristic(c) => w2::Source::Characteristic(w2::BleCharacteristic {
            address: c.address.clone(),
            service: c.service.clone(),
            characteristic: c.characteristic.clone(),
        }),
        data::Source::Advertisement(a) => w2::Source::Advertisement(w2::BleAdvertisement {
            address: a.address.clone(),
            rssi: a.rssi,
            tx_power: a.tx_power,
            local_name: a.local_name.clone(),
            manufacturer_data: a
                .manufacturer_data
                .iter()
                .map(|m| w2::ManufacturerData { company: m.company, data: m.data.clone() })
                .collect(),
            service_data: a
                .service_data
                .iter()
                .map(|s| w2::ServiceData { uuid: s.uuid.clone(), data: s.data.clone() })
                .collect(),
            services: a.services.clone(),
        }),
        data::Source::Can(c) => w2::Source::Can(can_frame_v2(c)),
        data::Source::None => w2::Source::None,
    }
}

fn can_frame_v2(c: &data::CanFrame) -> w2::CanFrame {
    w2::CanFrame { id: c.id, extended: c.extended, rtr: c.rtr, fd: c.fd, brs: c.brs, esi: c.esi }
}

fn value_from_v2(v: w2::Value) -> data::Value {
    match v {
        w2::Value::Boolean(b) => data::Value::Bool(b),
        w2::Value::Integer(i) => data::Value::Int(i),
        w2::Value::Double(f) => data::Value::Float(f),
        w2::Value::Text(s) => data::Value::Text(s),
        w2::Value::Json(s) => data::Value::Json(s),
    }
}

fn value_v2(v: &data::Value) -> w2::Value {
    match v {
        data::Value::Bool(b) => w2::Value::Boolean(*b),
        data::Value::Int(i) => w2::Value::Integer(*i),
        data::Value::Float(f) => w2::Value::Double(*f),
        data::Value::Text(s) => w2::Value::Text(s.clone()),
        data::Value::Json(s) => w2::Value::Json(s.clone()),
    }
}

/// What a guest returned breaks the contract in a way its types cannot
/// say (an entry naming a key its table does not have, fewer results than
/// requests): the call fails as [`crate::CallError::Contract`] and the
/// instance is dropped, as for a batch answered with the wrong count.
#[derive(Debug)]
pub(crate) struct ContractBroken(pub String);

impl std::fmt::Display for ContractBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ContractBroken {}

/// A batch's results: each key of the table shared by every entry naming it.
fn results_v2(
    r: w2::UplinkResults,
    cache: &mut crate::host::KeyCache,
) -> Result<Vec<Result<data::ConvertedMessage, String>>, ContractBroken> {
    let keys: Vec<Key> = r.keys.into_iter().map(|k| cache.key(k)).collect();
    r.results
        .into_iter()
        .map(|result| match result {
            Ok(o) => converted_v2(o, &keys).map(Ok),
            Err(e) => Ok(Err(e.message)),
        })
        .collect()
}

fn entries_v2(entries: Vec<w2::Entry>, keys: &[Key]) -> Result<Vec<data::Entry>, ContractBroken> {
    entries
        .into_iter()
        .map(|e| match keys.get(e.key as usize) {
            Some(key) => Ok(data::Entry { key: key.clone(), value: value_from_v2(e.value) }),
            None => Err(ContractBroken(format!("an entry names key {} of a key table of {}", e.key, keys.len()))),
        })
        .collect()
}

fn converted_v2(o: w2::UplinkOutput, keys: &[Key]) -> Result<data::ConvertedMessage, ContractBroken> {
    let mut updates = Vec::with_capacity(o.updates.len());
    for u in o.updates {
        let mut telemetry = Vec::with_capacity(u.telemetry.len());
        for t in u.telemetry {
            telemetry.push(data::Telemetry { ts: t.ts, values: entries_v2(t.values, keys)? });
        }
        updates.push(data::DeviceUpdate {
            device: u.device,
            device_type: u.device_type,
            attributes: entries_v2(u.attributes, keys)?,
            telemetry,
        });
    }
    let requests = o
        .requests
        .into_iter()
        .map(|r| match r {
            w2::DeviceRequest::Connect(i) => {
                data::DeviceRequest::Connect { device: i.device, device_type: i.device_type }
            }
            w2::DeviceRequest::Disconnect(device) => data::DeviceRequest::Disconnect { device },
            w2::DeviceRequest::Attributes(a) => data::DeviceRequest::Attributes(data::AttributeRequest {
                device: a.device,
                keys: a.keys,
                client: a.client,
                context: a.context,
            }),
        })
        .collect();
    let dropped = o.dropped.into_iter().map(|d| data::Dropped { key: d.key, reason: d.reason }).collect();
    Ok(data::ConvertedMessage { updates, requests, dropped })
}

/// A message's source as 0.1 has it (the nearest), and its metadata when
/// the rest must be added to it.
fn v1_parts(m: &data::RawUplink) -> (w1::Source, Option<Vec<(String, String)>>) {
    let mut extra: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| extra.push((k.to_owned(), v));
    let source = match &m.source {
        data::Source::Mqtt(mq) => {
            put("qos", mq.qos.to_string());
            if mq.retain {
                put("retain", "true".into());
            }
            w1::Source::Topic(mq.topic.clone())
        }
        data::Source::Registers(r) => w1::Source::Registers(w1::RegisterBlock {
            unit_id: r.unit_id,
            function_code: r.function_code,
            address: r.address,
            count: r.count,
        }),
        data::Source::Opcua(o) => {
            put("status", o.status.to_string());
            w1::Source::Node(o.node.clone())
        }
        data::Source::Characteristic(c) => {
            put("address", c.address.clone());
            w1::Source::Characteristic(c.characteristic.clone())
        }
        data::Source::Advertisement(a) => {
            put("address", a.address.clone());
            if let Some(rssi) = a.rssi {
                put("rssi", rssi.to_string());
            }
            w1::Source::None
        }
        data::Source::Can(c) => w1::Source::Can(w1::CanId { id: c.id, extended: c.extended }),
        data::Source::None => w1::Source::None,
    };
    if let Some(device) = &m.device {
        put("device", device.clone());
    }
    let metadata = (!extra.is_empty()).then(|| m.metadata.iter().cloned().chain(extra).collect());
    (source, metadata)
}

fn converted_v1(o: w1::UplinkOutput) -> data::ConvertedMessage {
    let entries = |entries: Vec<w1::Entry>| -> Vec<data::Entry> {
        entries
            .into_iter()
            .map(|e| {
                data::Entry::new(
                    e.key,
                    match e.value {
                        w1::Value::Boolean(b) => data::Value::Bool(b),
                        w1::Value::Integer(i) => data::Value::Int(i),
                        w1::Value::Double(f) => data::Value::Float(f),
                        w1::Value::Text(s) => data::Value::Text(s),
                        w1::Value::Json(s) => data::Value::Json(s),
                    },
                )
            })
            .collect()
    };
    data::ConvertedMessage {
        updates: o
            .updates
            .into_iter()
            .map(|u| data::DeviceUpdate {
                device: u.device,
                device_type: u.device_type,
                attributes: entries(u.attributes),
                telemetry: u
                    .telemetry
                    .into_iter()
                    .map(|t| data::Telemetry { ts: t.ts, values: entries(t.values) })
                    .collect(),
            })
            .collect(),
        requests: Vec::new(),
        dropped: o.dropped.into_iter().map(|d| data::Dropped { key: d.key, reason: d.reason }).collect(),
    }
}

// ----- Downlink -----

#[doc(hidden)]
#[derive(Clone)]
pub enum DownlinkIndices {
    V2(x2::downlink::GuestIndices),
    V1(x1::downlink::GuestIndices),
}

#[doc(hidden)]
pub enum DownlinkGuest {
    V2(x2::downlink::Guest),
    V1(x1::downlink::Guest),
}

impl Contract for Downlink {
    const DIRECTION: Direction = Direction::Downlink;
    type Input = data::DownlinkRequest;
    type Output = Vec<data::DownlinkMessage>;
    type Indices = DownlinkIndices;
    type Guest = DownlinkGuest;

    fn indices(pre: &InstancePre<HostState>) -> wasmtime::Result<Self::Indices> {
        if export_of(pre, "downlink", "0.2").is_some() {
            return Ok(DownlinkIndices::V2(x2::downlink::GuestIndices::new(pre)?));
        }
        if export_of(pre, "downlink", "0.1").is_some() {
            return Ok(DownlinkIndices::V1(x1::downlink::GuestIndices::new(pre)?));
        }
        Err(wasmtime::format_err!("no downlink export"))
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Guest> {
        Ok(match indices {
            DownlinkIndices::V2(i) => DownlinkGuest::V2(i.load(store, instance)?),
            DownlinkIndices::V1(i) => DownlinkGuest::V1(i.load(store, instance)?),
        })
    }

    fn create(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Created> {
        Ok(match guest {
            DownlinkGuest::V2(g) => g.converter().call_create(store, config)?.map_err(|e| (e.field, e.message)),
            DownlinkGuest::V1(g) => g.converter().call_create(store, config)?.map_err(|e| (e.field, e.message)),
        })
    }

    fn convert(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        converter: ResourceAny,
        batch: &[Self::Input],
    ) -> wasmtime::Result<Vec<Result<Self::Output, String>>> {
        match guest {
            DownlinkGuest::V2(g) => {
                let batch: Vec<w2::DownlinkRequest> = batch.iter().map(downlink_request_v2).collect();
                let results = g.converter().call_convert(store, converter, &batch)?;
                Ok(results
                    .into_iter()
                    .map(|r| r.map(|m| m.into_iter().map(downlink_message_from_v2).collect()).map_err(|e| e.message))
                    .collect())
            }
            DownlinkGuest::V1(g) => {
                // 0.1 had no attribute responses: those fail, the rest go.
                let served: Vec<Option<w1::DownlinkRequest>> = batch.iter().map(downlink_request_v1).collect();
                let inputs: Vec<w1::DownlinkRequest> = served.iter().flatten().cloned().collect();
                let results = g.converter().call_convert(store, converter, &inputs)?;
                if results.len() != inputs.len() {
                    let reason = format!("returned {} results for a batch of {}", results.len(), inputs.len());
                    return Err(ContractBroken(reason).into());
                }
                let mut results = results.into_iter();
                Ok(served
                    .iter()
                    .map(|s| match (s, s.as_ref().and_then(|_| results.next())) {
                        (Some(_), Some(r)) => {
                            r.map(|m| m.into_iter().map(mqtt_from_v1).collect()).map_err(|e| e.message)
                        }
                        _ => Err("the converter was built against contract 0.1.0, which cannot answer a \
                                  device's attribute request (0.2 can)"
                            .to_owned()),
                    })
                    .collect())
            }
        }
    }

    fn sanitize(output: &mut Self::Output) -> (usize, usize) {
        let size = output
            .iter()
            .map(|m| match m {
                data::DownlinkMessage::Mqtt(p) => p.topic.len() + p.payload.len(),
                data::DownlinkMessage::Modbus(r) => 8 + r.payload.len(),
                data::DownlinkMessage::Opcua(r) => match r {
                    data::OpcuaRequest::Read(n) => n.len(),
                    data::OpcuaRequest::Write { node, .. } => node.len() + 8,
                    data::OpcuaRequest::Call { object, method, arguments } => {
                        object.len() + method.len() + 8 * arguments.len()
                    }
                },
                data::DownlinkMessage::Ble(r) => match r {
                    data::BleRequest::Read(c) => c.len(),
                    data::BleRequest::Write { characteristic, payload, .. } => characteristic.len() + payload.len(),
                    data::BleRequest::Scan => 0,
                },
                data::DownlinkMessage::Can(c) => 8 + c.payload.len(),
            })
            .sum();
        (size, 0)
    }
}

impl Downlink {
    /// ThingsBoard's replies to RPCs from the devices' answers: the
    /// component's `reply` (0.2), or the plain reply (0.1).
    pub(crate) fn reply(
        guest: &DownlinkGuest,
        store: &mut Store<HostState>,
        converter: ResourceAny,
        answers: &[RpcAnswer],
    ) -> wasmtime::Result<Vec<Result<String, String>>> {
        match guest {
            DownlinkGuest::V2(g) => {
                let batch: Vec<w2::RpcAnswer> = answers
                    .iter()
                    .map(|a| w2::RpcAnswer {
                        request: rpc_v2(&a.request),
                        answers: a.answers.iter().map(raw_uplink_v2).collect(),
                    })
                    .collect();
                let results = g.converter().call_reply(store, converter, &batch)?;
                Ok(results.into_iter().map(|r| r.map_err(|e| e.message)).collect())
            }
            DownlinkGuest::V1(_) => Ok(answers.iter().map(|a| Ok(a.plain_reply())).collect()),
        }
    }
}

fn raw_uplink_v2(m: &data::RawUplink) -> w2::RawUplink {
    w2::RawUplink {
        source: source_v2(&m.source),
        device: m.device.clone(),
        payload: m.payload.clone(),
        metadata: m.metadata.clone(),
        received_at: m.received_at,
    }
}

fn rpc_v2(r: &data::RpcRequest) -> w2::RpcRequest {
    w2::RpcRequest { device: r.device.clone(), id: r.id, method: r.method.clone(), params: r.params.clone() }
}

fn attributes_v2(entries: &[data::Entry]) -> Vec<w2::Attribute> {
    entries.iter().map(|e| w2::Attribute { key: e.key.to_string(), value: value_v2(&e.value) }).collect()
}

fn downlink_request_v2(r: &data::DownlinkRequest) -> w2::DownlinkRequest {
    match r {
        data::DownlinkRequest::Rpc(rpc) => w2::DownlinkRequest::Rpc(rpc_v2(rpc)),
        data::DownlinkRequest::AttributeUpdate(a) => w2::DownlinkRequest::AttributeUpdate(w2::AttributeUpdate {
            device: a.device.clone(),
            attributes: attributes_v2(&a.entries),
        }),
        data::DownlinkRequest::AttributeResponse(a) => w2::DownlinkRequest::AttributeResponse(w2::AttributeResponse {
            device: a.device.clone(),
            keys: a.keys.clone(),
            values: attributes_v2(&a.values),
            context: a.context.clone(),
        }),
    }
}

fn downlink_message_from_v2(m: w2::DownlinkMessage) -> data::DownlinkMessage {
    match m {
        w2::DownlinkMessage::Mqtt(p) => data::DownlinkMessage::Mqtt(data::MqttPublish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            response: p.response.map(|r| data::MqttResponse { topic: r.topic, qos: r.qos, timeout_ms: r.timeout_ms }),
        }),
        w2::DownlinkMessage::Modbus(r) => data::DownlinkMessage::Modbus(data::ModbusRequest {
            function_code: r.function_code,
            address: r.address,
            count: r.count,
            payload: r.payload,
        }),
        w2::DownlinkMessage::Opcua(r) => data::DownlinkMessage::Opcua(match r {
            w2::OpcuaRequest::Read(node) => data::OpcuaRequest::Read(node),
            w2::OpcuaRequest::Write(w) => data::OpcuaRequest::Write { node: w.node, value: value_from_v2(w.value) },
            w2::OpcuaRequest::Call(c) => data::OpcuaRequest::Call {
                object: c.object,
                method: c.method,
                arguments: c.arguments.into_iter().map(value_from_v2).collect(),
            },
        }),
        w2::DownlinkMessage::Ble(r) => data::DownlinkMessage::Ble(match r {
            w2::BleRequest::Read(c) => data::BleRequest::Read(c),
            w2::BleRequest::Write(w) => data::BleRequest::Write {
                characteristic: w.characteristic,
                payload: w.payload,
                with_response: w.with_response,
            },
            w2::BleRequest::Scan => data::BleRequest::Scan,
        }),
        w2::DownlinkMessage::Can(c) => data::DownlinkMessage::Can(data::CanSend {
            frame: data::CanFrame {
                id: c.frame.id,
                extended: c.frame.extended,
                rtr: c.frame.rtr,
                fd: c.frame.fd,
                brs: c.frame.brs,
                esi: c.frame.esi,
            },
            payload: c.payload,
            response: c.response.map(|r| data::CanResponse {
                id: r.id,
                extended: r.extended,
                timeout_ms: r.timeout_ms,
            }),
        }),
    }
}

/// A request as 0.1 has it; `None` for what 0.1 did not have.
fn downlink_request_v1(r: &data::DownlinkRequest) -> Option<w1::DownlinkRequest> {
    Some(match r {
        data::DownlinkRequest::Rpc(rpc) => w1::DownlinkRequest::Rpc(w1::RpcRequest {
            device: rpc.device.clone(),
            id: rpc.id,
            method: rpc.method.clone(),
            params: rpc.params.clone(),
        }),
        data::DownlinkRequest::AttributeUpdate(a) => w1::DownlinkRequest::AttributeUpdate(w1::AttributeUpdate {
            device: a.device.clone(),
            entries: a
                .entries
                .iter()
                .map(|e| w1::Entry {
                    key: e.key.to_string(),
                    value: match &e.value {
                        data::Value::Bool(b) => w1::Value::Boolean(*b),
                        data::Value::Int(i) => w1::Value::Integer(*i),
                        data::Value::Float(f) => w1::Value::Double(*f),
                        data::Value::Text(s) => w1::Value::Text(s.clone()),
                        data::Value::Json(s) => w1::Value::Json(s.clone()),
                    },
                })
                .collect(),
        }),
        data::DownlinkRequest::AttributeResponse(_) => return None,
    })
}

/// A 0.1 message: an MQTT publish to `target`, as the MQTT connector of 0.1
/// read its metadata.
fn mqtt_from_v1(m: w1::DownlinkMessage) -> data::DownlinkMessage {
    let meta = |key: &str| m.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let qos = meta("qos").and_then(|q| q.parse::<u8>().ok()).unwrap_or(0).min(1);
    let retain = meta("retain") == Some("true");
    let response = meta("response-topic").map(|topic| data::MqttResponse {
        topic: topic.to_owned(),
        qos: meta("response-qos").and_then(|q| q.parse::<u8>().ok()).unwrap_or(1).min(1),
        timeout_ms: meta("response-timeout-ms").and_then(|t| t.parse().ok()).unwrap_or(10_000),
    });
    data::DownlinkMessage::Mqtt(data::MqttPublish { topic: m.target, payload: m.payload, qos, retain, response })
}
