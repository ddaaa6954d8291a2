//! Between the contract's types (`wit`) and the data model: moves, no
//! copies, but for the keys of a batch's results, which go to its table.

use crate::keys::KeyTable;
use crate::wit;
use tbgw_data as d;

pub(crate) fn raw_uplink(m: wit::RawUplink) -> d::RawUplink {
    d::RawUplink {
        source: source(m.source),
        device: m.device,
        payload: m.payload,
        metadata: m.metadata,
        received_at: m.received_at,
    }
}

fn source(s: wit::Source) -> d::Source {
    match s {
        wit::Source::Mqtt(m) => d::Source::Mqtt(d::MqttMessage { topic: m.topic, qos: m.qos, retain: m.retain }),
        wit::Source::Registers(r) => d::Source::Registers(d::RegisterBlock {
            unit_id: r.unit_id,
            function_code: r.function_code,
            address: r.address,
            count: r.count,
        }),
        wit::Source::Opcua(o) => d::Source::Opcua(d::OpcuaValue {
            node: o.node,
            status: o.status,
            source_time: o.source_time,
            server_time: o.server_time,
        }),
        wit::Source::Characteristic(c) => d::Source::Characteristic(d::BleCharacteristic {
            address: c.address,
            service: c.service,
            characteristic: c.characteristic,
        }),
        wit::Source::Advertisement(a) => d::Source::Advertisement(d::BleAdvertisement {
            address: a.address,
            rssi: a.rssi,
            tx_power: a.tx_power,
            local_name: a.local_name,
            manufacturer_data: a
                .manufacturer_data
                .into_iter()
                .map(|m| d::ManufacturerData { company: m.company, data: m.data })
                .collect(),
            service_data: a.service_data.into_iter().map(|s| d::ServiceData { uuid: s.uuid, data: s.data }).collect(),
            services: a.services,
        }),
        wit::Source::Can(c) => d::Source::Can(can_frame(c)),
        wit::Source::None => d::Source::None,
    }
}

fn can_frame(c: wit::CanFrame) -> d::CanFrame {
    d::CanFrame { id: c.id, extended: c.extended, rtr: c.rtr, fd: c.fd, brs: c.brs, esi: c.esi }
}

fn value(v: d::Value) -> wit::Value {
    match v {
        d::Value::Bool(b) => wit::Value::Boolean(b),
        d::Value::Int(i) => wit::Value::Integer(i),
        d::Value::Float(f) => wit::Value::Double(f),
        d::Value::Text(s) => wit::Value::Text(s),
        d::Value::Json(s) => wit::Value::Json(s),
    }
}

fn value_from(v: wit::Value) -> d::Value {
    match v {
        wit::Value::Boolean(b) => d::Value::Bool(b),
        wit::Value::Integer(i) => d::Value::Int(i),
        wit::Value::Double(f) => d::Value::Float(f),
        wit::Value::Text(s) => d::Value::Text(s),
        wit::Value::Json(s) => d::Value::Json(s),
    }
}

fn entries(entries: Vec<d::Entry>, keys: &mut KeyTable) -> Vec<wit::Entry> {
    entries.into_iter().map(|e| wit::Entry { key: keys.index(e.key), value: value(e.value) }).collect()
}

pub(crate) fn uplink_output(o: d::ConvertedMessage, keys: &mut KeyTable) -> wit::UplinkOutput {
    wit::UplinkOutput {
        updates: o
            .updates
            .into_iter()
            .map(|u| wit::DeviceUpdate {
                device: u.device,
                device_type: u.device_type,
                attributes: entries(u.attributes, keys),
                telemetry: u
                    .telemetry
                    .into_iter()
                    .map(|t| wit::Telemetry { ts: t.ts, values: entries(t.values, keys) })
                    .collect(),
            })
            .collect(),
        requests: o.requests.into_iter().map(device_request).collect(),
        dropped: o.dropped.into_iter().map(|d| wit::Dropped { key: d.key, reason: d.reason }).collect(),
    }
}

fn device_request(r: d::DeviceRequest) -> wit::DeviceRequest {
    match r {
        d::DeviceRequest::Connect { device, device_type } => {
            wit::DeviceRequest::Connect(wit::DeviceInfo { device, device_type })
        }
        d::DeviceRequest::Disconnect { device } => wit::DeviceRequest::Disconnect(device),
        d::DeviceRequest::Attributes(a) => wit::DeviceRequest::Attributes(wit::AttributeRequest {
            device: a.device,
            keys: a.keys,
            client: a.client,
            context: a.context,
        }),
    }
}

fn attributes(list: Vec<wit::Attribute>) -> Vec<d::Entry> {
    list.into_iter().map(|a| d::Entry::new(a.key, value_from(a.value))).collect()
}

fn rpc_request(r: wit::RpcRequest) -> d::RpcRequest {
    d::RpcRequest { device: r.device, id: r.id, method: r.method, params: r.params }
}

pub(crate) fn downlink_request(r: wit::DownlinkRequest) -> d::DownlinkRequest {
    match r {
        wit::DownlinkRequest::Rpc(r) => d::DownlinkRequest::Rpc(rpc_request(r)),
        wit::DownlinkRequest::AttributeUpdate(u) => d::DownlinkRequest::AttributeUpdate(d::AttributeUpdate {
            device: u.device,
            entries: attributes(u.attributes),
        }),
        wit::DownlinkRequest::AttributeResponse(a) => d::DownlinkRequest::AttributeResponse(d::AttributeResponse {
            device: a.device,
            keys: a.keys,
            values: attributes(a.values),
            context: a.context,
        }),
    }
}

pub(crate) fn rpc_answer(a: wit::RpcAnswer) -> d::RpcAnswer {
    d::RpcAnswer { request: rpc_request(a.request), answers: a.answers.into_iter().map(raw_uplink).collect() }
}

pub(crate) fn downlink_message(m: d::DownlinkMessage) -> wit::DownlinkMessage {
    match m {
        d::DownlinkMessage::Mqtt(p) => wit::DownlinkMessage::Mqtt(wit::MqttPublish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            response: p.response.map(|r| wit::MqttResponse { topic: r.topic, qos: r.qos, timeout_ms: r.timeout_ms }),
        }),
        d::DownlinkMessage::Modbus(r) => wit::DownlinkMessage::Modbus(wit::ModbusRequest {
            function_code: r.function_code,
            address: r.address,
            count: r.count,
            payload: r.payload,
        }),
        d::DownlinkMessage::Opcua(r) => wit::DownlinkMessage::Opcua(match r {
            d::OpcuaRequest::Read(node) => wit::OpcuaRequest::Read(node),
            d::OpcuaRequest::Write { node, value: v } => {
                wit::OpcuaRequest::Write(wit::OpcuaWrite { node, value: value(v) })
            }
            d::OpcuaRequest::Call { object, method, arguments } => wit::OpcuaRequest::Call(wit::OpcuaCall {
                object,
                method,
                arguments: arguments.into_iter().map(value).collect(),
            }),
        }),
        d::DownlinkMessage::Ble(r) => wit::DownlinkMessage::Ble(match r {
            d::BleRequest::Read(c) => wit::BleRequest::Read(c),
            d::BleRequest::Write { characteristic, payload, with_response } => {
                wit::BleRequest::Write(wit::BleWrite { characteristic, payload, with_response })
            }
            d::BleRequest::Scan => wit::BleRequest::Scan,
        }),
        d::DownlinkMessage::Can(c) => wit::DownlinkMessage::Can(wit::CanSend {
            frame: wit::CanFrame {
                id: c.frame.id,
                extended: c.frame.extended,
                rtr: c.frame.rtr,
                fd: c.frame.fd,
                brs: c.frame.brs,
                esi: c.frame.esi,
            },
            payload: c.payload,
            response: c.response.map(|r| wit::CanResponse { id: r.id, extended: r.extended, timeout_ms: r.timeout_ms }),
        }),
    }
}
