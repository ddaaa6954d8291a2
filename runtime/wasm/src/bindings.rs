//! The one `bindgen!` over `wit/`, and the two directions of the contract
//! as implementations of [`Contract`]: how to call a guest, and how its
//! types map to `tbgw-core`'s.
//!
//! The host world below imports what every converter may import and exports
//! both interfaces, so the contract's types are generated once; a component
//! only has to export one of them, which [`Contract::indices`] looks up.

use crate::host::HostState;
use tbgw_core as data;
use tbgw_core::Direction;
use wasmtime::Store;
use wasmtime::component::{
    ComponentExportIndex, ComponentType, Func, Instance, InstancePre, Lower, ResourceAny, TypedFunc,
};

wasmtime::component::bindgen!({
    path: "../../wit",
    inline: "
        package tbgw:host;
        world host {
            import tbgw:converter/log@0.1.0;
            export tbgw:converter/uplink@0.1.0;
            export tbgw:converter/downlink@0.1.0;
        }
    ",
    world: "tbgw:host/host",
});

use exports::tbgw::converter::{downlink, uplink};
use tbgw::converter::types as wit;

/// The contract version this host implements.
pub const CONTRACT_VERSION: &str = "0.1.0";
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

    /// The export name of the interface, with its version.
    fn export_name() -> String {
        let iface = match Self::DIRECTION {
            Direction::Uplink => "uplink",
            Direction::Downlink => "downlink",
        };
        format!("{CONTRACT_PACKAGE}/{iface}@{CONTRACT_VERSION}")
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

/// ThingsBoard requests to device messages: the `downlink-converter` world.
#[derive(Debug, Clone, Copy)]
pub struct Downlink;

impl sealed::Sealed for Uplink {}
impl sealed::Sealed for Downlink {}

/// `raw-uplink` lowered from the caller's message without copying its
/// payload and metadata first (the generated `wit::RawUplink` owns them).
#[derive(ComponentType, Lower)]
#[component(record)]
struct RawUplinkRef<'a> {
    #[component(name = "source")]
    source: wit::Source,
    #[component(name = "payload")]
    payload: &'a [u8],
    #[component(name = "metadata")]
    metadata: &'a [(String, String)],
    #[component(name = "received-at")]
    received_at: i64,
}

type UplinkResults = (Vec<Result<wit::UplinkOutput, wit::ConvertError>>,);

#[doc(hidden)]
#[derive(Clone)]
pub struct UplinkIndices {
    generated: uplink::GuestIndices,
    convert: ComponentExportIndex,
}

#[doc(hidden)]
pub struct UplinkGuest {
    generated: uplink::Guest,
    /// `[method]converter.convert`, type-checked with `RawUplinkRef` params.
    convert: Func,
}

impl Contract for Uplink {
    const DIRECTION: Direction = Direction::Uplink;
    type Input = data::RawUplink;
    type Output = data::ConvertedMessage;
    type Indices = UplinkIndices;
    type Guest = UplinkGuest;

    fn indices(pre: &InstancePre<HostState>) -> wasmtime::Result<Self::Indices> {
        let generated = uplink::GuestIndices::new(pre)?;
        let component = pre.component();
        let convert = component
            .get_export_index(None, Self::export_name())
            .and_then(|iface| component.get_export_index(Some(&iface), "[method]converter.convert"))
            .ok_or_else(|| wasmtime::format_err!("no `[method]converter.convert` export"))?;
        Ok(UplinkIndices { generated, convert })
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Guest> {
        let generated = indices.generated.load(&mut *store, instance)?;
        let convert = *instance
            .get_typed_func::<(ResourceAny, &[RawUplinkRef]), UplinkResults>(&mut *store, &indices.convert)?
            .func();
        Ok(UplinkGuest { generated, convert })
    }

    fn create(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Created> {
        Ok(guest.generated.converter().call_create(store, config)?.map_err(|e| (e.field, e.message)))
    }

    fn convert(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        converter: ResourceAny,
        batch: &[Self::Input],
    ) -> wasmtime::Result<Vec<Result<Self::Output, String>>> {
        let batch: Vec<RawUplinkRef> = batch
            .iter()
            .map(|m| RawUplinkRef {
                source: source_to_wit(&m.source),
                payload: &m.payload,
                metadata: &m.metadata,
                received_at: m.received_at,
            })
            .collect();
        // SAFETY: `load` type-checked this function with exactly these types.
        let convert =
            unsafe { TypedFunc::<(ResourceAny, &[RawUplinkRef]), UplinkResults>::new_unchecked(guest.convert) };
        let (results,) = convert.call(store, (converter, &batch))?;
        Ok(results.into_iter().map(|r| r.map(converted_from_wit).map_err(|e| e.message)).collect())
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
        (size + dropped.iter().map(|d| d.key.len() + d.reason.len()).sum::<usize>(), dropped.len())
    }
}

impl Contract for Downlink {
    const DIRECTION: Direction = Direction::Downlink;
    type Input = data::DownlinkRequest;
    type Output = Vec<data::DownlinkMessage>;
    type Indices = downlink::GuestIndices;
    type Guest = downlink::Guest;

    fn indices(pre: &InstancePre<HostState>) -> wasmtime::Result<Self::Indices> {
        downlink::GuestIndices::new(pre)
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Guest> {
        indices.load(store, instance)
    }

    fn create(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Created> {
        Ok(guest.converter().call_create(store, config)?.map_err(|e| (e.field, e.message)))
    }

    fn convert(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        converter: ResourceAny,
        batch: &[Self::Input],
    ) -> wasmtime::Result<Vec<Result<Self::Output, String>>> {
        let batch: Vec<wit::DownlinkRequest> = batch.iter().map(downlink_request_to_wit).collect();
        let results = guest.converter().call_convert(store, converter, &batch)?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.map(|messages| {
                    messages
                        .into_iter()
                        .map(|m| data::DownlinkMessage { target: m.target, payload: m.payload, metadata: m.metadata })
                        .collect()
                })
                .map_err(|e| e.message)
            })
            .collect())
    }

    fn sanitize(output: &mut Self::Output) -> (usize, usize) {
        let size = output
            .iter()
            .map(|m| {
                m.target.len() + m.payload.len() + m.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            })
            .sum();
        (size, 0)
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
                dropped.push(data::Dropped { key: e.key.clone(), reason });
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

fn source_to_wit(source: &data::Source) -> wit::Source {
    match source {
        data::Source::Topic(t) => wit::Source::Topic(t.clone()),
        data::Source::Node(n) => wit::Source::Node(n.clone()),
        data::Source::Registers(r) => wit::Source::Registers(wit::RegisterBlock {
            unit_id: r.unit_id,
            function_code: r.function_code,
            address: r.address,
            count: r.count,
        }),
        data::Source::Characteristic(c) => wit::Source::Characteristic(c.clone()),
        data::Source::Can(c) => wit::Source::Can(wit::CanId { id: c.id, extended: c.extended }),
        data::Source::None => wit::Source::None,
    }
}

fn converted_from_wit(o: wit::UplinkOutput) -> data::ConvertedMessage {
    data::ConvertedMessage {
        updates: o
            .updates
            .into_iter()
            .map(|u| data::DeviceUpdate {
                device: u.device,
                device_type: u.device_type,
                attributes: entries_from_wit(u.attributes),
                telemetry: u
                    .telemetry
                    .into_iter()
                    .map(|t| data::Telemetry { ts: t.ts, values: entries_from_wit(t.values) })
                    .collect(),
            })
            .collect(),
        dropped: o.dropped.into_iter().map(|d| data::Dropped { key: d.key, reason: d.reason }).collect(),
    }
}

fn entries_from_wit(entries: Vec<wit::Entry>) -> Vec<data::Entry> {
    entries
        .into_iter()
        .map(|e| data::Entry {
            key: e.key,
            value: match e.value {
                wit::Value::Boolean(b) => data::Value::Bool(b),
                wit::Value::Integer(i) => data::Value::Int(i),
                wit::Value::Double(f) => data::Value::Float(f),
                wit::Value::Text(s) => data::Value::Text(s),
                wit::Value::Json(s) => data::Value::Json(s),
            },
        })
        .collect()
}

fn downlink_request_to_wit(r: &data::DownlinkRequest) -> wit::DownlinkRequest {
    match r {
        data::DownlinkRequest::Rpc(rpc) => wit::DownlinkRequest::Rpc(wit::RpcRequest {
            device: rpc.device.clone(),
            id: rpc.id,
            method: rpc.method.clone(),
            params: rpc.params.clone(),
        }),
        data::DownlinkRequest::AttributeUpdate(a) => wit::DownlinkRequest::AttributeUpdate(wit::AttributeUpdate {
            device: a.device.clone(),
            entries: a
                .entries
                .iter()
                .map(|e| wit::Entry {
                    key: e.key.clone(),
                    value: match &e.value {
                        data::Value::Bool(b) => wit::Value::Boolean(*b),
                        data::Value::Int(i) => wit::Value::Integer(*i),
                        data::Value::Float(f) => wit::Value::Double(*f),
                        data::Value::Text(s) => wit::Value::Text(s.clone()),
                        data::Value::Json(s) => wit::Value::Json(s.clone()),
                    },
                })
                .collect(),
        }),
    }
}
