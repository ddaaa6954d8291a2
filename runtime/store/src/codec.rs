//! The on-disk form of events and device records: a compact binary encoding,
//! versioned by its first byte.
//!
//! ```text
//! event   = version:u8(=1) connector:str device:str type:opt<str>
//!           attributes:list<entry> telemetry:list<(ts:i64 values:list<entry>)>
//!           [updates:varint]     (added later; absent: 1, and written only when > 1)
//! entry   = key:str value
//! value   = tag:u8 payload      0 false, 1 true, 2 i64 LE, 3 f64 LE, 4 text:str, 5 json:str
//! str     = len:varint bytes (UTF-8)      list<T> = count:varint T*
//! opt<T>  = 0 | 1 T
//! device  = version:u8(=1) connector:str type:opt<str>
//! letter  = version:u8(=1) connector:str route:str converter:str sha256:str reason:str
//!           failed_at:i64 source device:opt<str> payload:bytes metadata:list<(str str)> received_at:i64
//! source  = 0 | 1 topic:str qos:u8 retain:u8 | 2 unit:u8 function:u8 address:u16 count:u16
//!         | 3 node:str status:u32 source_time:opt<i64> server_time:opt<i64>
//!         | 4 address:str service:str characteristic:str
//!         | 5 address:str rssi:opt<i16> tx_power:opt<i16> name:opt<str>
//!             list<(company:u16 bytes)> list<(uuid:str bytes)> list<str>
//!         | 6 id:u32 flags:u8 (extended, rtr, fd, brs, esi from bit 0)
//! bytes   = len:varint bytes       (integers little-endian)
//! ```
//!
//! A stored telemetry entry always has its timestamp: the pipeline fills in
//! the receipt time before storing.

use crate::DeadLetter;
use tbgw_core::{
    BleAdvertisement, BleCharacteristic, CanFrame, DeviceRecord, DeviceUpdate, Entry, Event, ManufacturerData,
    MqttMessage, OpcuaValue, RawUplink, RegisterBlock, ServiceData, Source, Telemetry, Value,
};

const VERSION: u8 = 1;

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct DecodeError(&'static str);

/// Encode an event.
pub fn encode_event(e: &Event, out: &mut Vec<u8>) {
    let u = &e.update;
    out.push(VERSION);
    put_str(out, &e.connector);
    put_str(out, &u.device);
    put_opt_str(out, u.device_type.as_deref());
    put_entries(out, &u.attributes);
    put_varint(out, u.telemetry.len() as u64);
    for t in &u.telemetry {
        out.extend_from_slice(&t.ts.unwrap_or(0).to_le_bytes());
        put_entries(out, &t.values);
    }
    // An event of one update is written as before the field was added.
    if e.updates != 1 {
        put_varint(out, u64::from(e.updates));
    }
}

/// Decode an event.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return Err(DecodeError("unknown event format version"));
    }
    let connector = r.string()?;
    let device = r.string()?;
    let device_type = r.opt_string()?;
    let attributes = r.entries()?;
    let n = r.count()?;
    let mut telemetry = Vec::with_capacity(n);
    for _ in 0..n {
        let ts = i64::from_le_bytes(r.array()?);
        telemetry.push(Telemetry { ts: Some(ts), values: r.entries()? });
    }
    let updates = if r.0.is_empty() {
        1
    } else {
        match u32::try_from(r.varint()?) {
            Ok(0) => return Err(DecodeError("an event of no update")),
            Ok(n) => n,
            Err(_) => return Err(DecodeError("an update count beyond u32")),
        }
    };
    if !r.0.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(Event { connector, update: DeviceUpdate { device, device_type, attributes, telemetry }, updates })
}

/// Encode a device record.
pub fn encode_device(d: &DeviceRecord) -> Vec<u8> {
    let mut out = vec![VERSION];
    put_str(&mut out, &d.connector);
    put_opt_str(&mut out, d.device_type.as_deref());
    // Added later: records written before it end here.
    put_opt_str(&mut out, d.renamed.as_deref());
    out
}

/// Decode a device record.
pub fn decode_device(bytes: &[u8]) -> Result<DeviceRecord, DecodeError> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return Err(DecodeError("unknown device format version"));
    }
    let (connector, device_type) = (r.string()?, r.opt_string()?);
    let renamed = if r.0.is_empty() { None } else { r.opt_string()? };
    Ok(DeviceRecord { connector, device_type, renamed })
}

/// Encode a dead letter.
pub fn encode_dead_letter(l: &DeadLetter, out: &mut Vec<u8>) {
    out.push(VERSION);
    for s in [&l.connector, &l.route, &l.converter, &l.converter_sha256, &l.reason] {
        put_str(out, s);
    }
    out.extend_from_slice(&l.failed_at.to_le_bytes());
    let r = &l.raw;
    match &r.source {
        Source::None => out.push(0),
        Source::Mqtt(m) => {
            out.push(1);
            put_str(out, &m.topic);
            out.extend_from_slice(&[m.qos, u8::from(m.retain)]);
        }
        Source::Registers(b) => {
            out.extend_from_slice(&[2, b.unit_id, b.function_code]);
            out.extend_from_slice(&b.address.to_le_bytes());
            out.extend_from_slice(&b.count.to_le_bytes());
        }
        Source::Opcua(v) => {
            out.push(3);
            put_str(out, &v.node);
            out.extend_from_slice(&v.status.to_le_bytes());
            for t in [v.source_time, v.server_time] {
                put_opt(out, t.map(i64::to_le_bytes).as_ref().map(|b| &b[..]));
            }
        }
        Source::Characteristic(c) => {
            out.push(4);
            for s in [&c.address, &c.service, &c.characteristic] {
                put_str(out, s);
            }
        }
        Source::Advertisement(a) => {
            out.push(5);
            put_str(out, &a.address);
            for n in [a.rssi, a.tx_power] {
                put_opt(out, n.map(i16::to_le_bytes).as_ref().map(|b| &b[..]));
            }
            put_opt_str(out, a.local_name.as_deref());
            put_varint(out, a.manufacturer_data.len() as u64);
            for m in &a.manufacturer_data {
                out.extend_from_slice(&m.company.to_le_bytes());
                put_bytes(out, &m.data);
            }
            put_varint(out, a.service_data.len() as u64);
            for d in &a.service_data {
                put_str(out, &d.uuid);
                put_bytes(out, &d.data);
            }
            put_varint(out, a.services.len() as u64);
            for s in &a.services {
                put_str(out, s);
            }
        }
        Source::Can(f) => {
            out.push(6);
            out.extend_from_slice(&f.id.to_le_bytes());
            let flags =
                [f.extended, f.rtr, f.fd, f.brs, f.esi].iter().enumerate().map(|(i, b)| u8::from(*b) << i).sum();
            out.push(flags);
        }
    }
    put_opt_str(out, r.device.as_deref());
    put_bytes(out, &r.payload);
    put_varint(out, r.metadata.len() as u64);
    for (k, v) in &r.metadata {
        put_str(out, k);
        put_str(out, v);
    }
    out.extend_from_slice(&r.received_at.to_le_bytes());
}

/// Decode a dead letter.
pub fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, DecodeError> {
    let mut r = Reader(bytes);
    if r.u8()? != VERSION {
        return Err(DecodeError("unknown dead letter format version"));
    }
    let (connector, route, converter, converter_sha256, reason) =
        (r.string()?, r.string()?, r.string()?, r.string()?, r.string()?);
    let failed_at = i64::from_le_bytes(r.array()?);
    let source = match r.u8()? {
        0 => Source::None,
        1 => Source::Mqtt(MqttMessage { topic: r.string()?, qos: r.u8()?, retain: r.u8()? != 0 }),
        2 => Source::Registers(RegisterBlock {
            unit_id: r.u8()?,
            function_code: r.u8()?,
            address: u16::from_le_bytes(r.array()?),
            count: u16::from_le_bytes(r.array()?),
        }),
        3 => Source::Opcua(OpcuaValue {
            node: r.string()?,
            status: u32::from_le_bytes(r.array()?),
            source_time: r.opt(|r| Ok(i64::from_le_bytes(r.array()?)))?,
            server_time: r.opt(|r| Ok(i64::from_le_bytes(r.array()?)))?,
        }),
        4 => Source::Characteristic(BleCharacteristic {
            address: r.string()?,
            service: r.string()?,
            characteristic: r.string()?,
        }),
        5 => {
            let address = r.string()?;
            let rssi = r.opt(|r| Ok(i16::from_le_bytes(r.array()?)))?;
            let tx_power = r.opt(|r| Ok(i16::from_le_bytes(r.array()?)))?;
            let local_name = r.opt_string()?;
            let mut manufacturer_data = Vec::new();
            for _ in 0..r.count()? {
                manufacturer_data.push(ManufacturerData { company: u16::from_le_bytes(r.array()?), data: r.bytes()? });
            }
            let mut service_data = Vec::new();
            for _ in 0..r.count()? {
                service_data.push(ServiceData { uuid: r.string()?, data: r.bytes()? });
            }
            let mut services = Vec::new();
            for _ in 0..r.count()? {
                services.push(r.string()?);
            }
            Source::Advertisement(BleAdvertisement {
                address,
                rssi,
                tx_power,
                local_name,
                manufacturer_data,
                service_data,
                services,
            })
        }
        6 => {
            let id = u32::from_le_bytes(r.array()?);
            let flags = r.u8()?;
            let bit = |i: u8| flags & (1 << i) != 0;
            Source::Can(CanFrame { id, extended: bit(0), rtr: bit(1), fd: bit(2), brs: bit(3), esi: bit(4) })
        }
        _ => return Err(DecodeError("bad source tag")),
    };
    let device = r.opt_string()?;
    let payload = r.bytes()?;
    let mut metadata = Vec::new();
    for _ in 0..r.count()? {
        metadata.push((r.string()?, r.string()?));
    }
    let received_at = i64::from_le_bytes(r.array()?);
    if !r.0.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(DeadLetter {
        connector,
        route,
        converter,
        converter_sha256,
        reason,
        failed_at,
        raw: RawUplink { source, device, payload, metadata, received_at },
    })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(b);
        }
        None => out.push(0),
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
        None => out.push(0),
    }
}

fn put_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    put_varint(out, entries.len() as u64);
    for e in entries {
        put_str(out, &e.key);
        match &e.value {
            Value::Bool(false) => out.push(0),
            Value::Bool(true) => out.push(1),
            Value::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Value::Text(s) => {
                out.push(4);
                put_str(out, s);
            }
            Value::Json(s) => {
                out.push(5);
                put_str(out, s);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    /// A count of items, each at least one byte: larger than what is left
    /// means corruption, not a huge allocation.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        usize::try_from(n).ok().filter(|n| *n <= self.0.len()).ok_or(DecodeError("count beyond the record"))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError("text is not UTF-8"))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.count()?;
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(s.to_vec())
    }

    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, DecodeError>) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(DecodeError("bad option tag")),
        }
    }

    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(DecodeError("bad option tag")),
        }
    }

    fn entries(&mut self) -> Result<Vec<Entry>, DecodeError> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let key = self.string()?;
            let value = match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                2 => Value::Int(i64::from_le_bytes(self.array()?)),
                3 => Value::Float(f64::from_le_bytes(self.array()?)),
                4 => Value::Text(self.string()?),
                5 => Value::Json(self.string()?),
                _ => return Err(DecodeError("bad value tag")),
            };
            out.push(Entry { key: key.into(), value });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Event {
        Event {
            connector: "mqtt".into(),
            update: DeviceUpdate {
                device: "SN-1 ❄".into(),
                device_type: Some("thermometer".into()),
                attributes: vec![
                    Entry::new("fw", Value::Text("1.2".into())),
                    Entry::new("cfg", Value::Json("{}".into())),
                ],
                telemetry: vec![Telemetry {
                    ts: Some(1_700_000_000_000),
                    values: vec![
                        Entry::new("t", Value::Float(-21.5)),
                        Entry::new("n", Value::Int(i64::MIN)),
                        Entry::new("on", Value::Bool(true)),
                        Entry::new("off", Value::Bool(false)),
                    ],
                }],
            },
            updates: 1,
        }
    }

    #[test]
    fn events_round_trip() {
        let e = sample();
        let mut buf = Vec::new();
        encode_event(&e, &mut buf);
        assert_eq!(decode_event(&buf), Ok(e.clone()));
        // An event of one update is written as before the count was added
        // (an older tbgw reads it); a merged one carries its count.
        assert_eq!(buf.last(), Some(&0), "ends with the last entry's value (false)");
        let merged = Event { updates: 3, ..e };
        buf.clear();
        encode_event(&merged, &mut buf);
        assert_eq!(buf.last(), Some(&3));
        assert_eq!(decode_event(&buf), Ok(merged));
    }

    #[test]
    fn corruption_is_an_error_not_a_panic_or_a_huge_allocation() {
        let mut buf = Vec::new();
        encode_event(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode_event(&buf[..cut]).is_err(), "a record cut at {cut} decoded");
        }
        let mut huge = vec![VERSION];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(decode_event(&huge), Err(DecodeError("count beyond the record")));
        buf.push(0);
        assert_eq!(decode_event(&buf), Err(DecodeError("an event of no update")));
        buf.pop();
        buf.extend_from_slice(&[2, 0]);
        assert_eq!(decode_event(&buf), Err(DecodeError("trailing bytes")));
    }

    #[test]
    fn devices_round_trip() {
        let d = DeviceRecord { device_type: None, connector: "mqtt".into(), renamed: None };
        assert_eq!(decode_device(&encode_device(&d)), Ok(d));
        let r =
            DeviceRecord { device_type: Some("meter".into()), connector: "m".into(), renamed: Some("Boiler".into()) };
        assert_eq!(decode_device(&encode_device(&r)), Ok(r));
        // A record written before renames were kept reads as not renamed.
        let mut old = vec![VERSION];
        put_str(&mut old, "mqtt");
        put_opt_str(&mut old, Some("thermometer"));
        let read = decode_device(&old);
        assert_eq!(read.map(|d| (d.device_type, d.renamed)), Ok((Some("thermometer".into()), None)));
    }

    #[test]
    fn dead_letters_round_trip_from_every_source() {
        let sources = [
            Source::None,
            Source::mqtt("sensor/a/data"),
            Source::Registers(RegisterBlock { unit_id: 1, function_code: 3, address: 40, count: 2 }),
            Source::Opcua(OpcuaValue {
                node: "ns=2;s=T".into(),
                status: 0x8000_0000,
                source_time: Some(-5),
                server_time: None,
            }),
            Source::Characteristic(BleCharacteristic {
                address: "AA:BB".into(),
                service: "180f".into(),
                characteristic: "2a19".into(),
            }),
            Source::Advertisement(BleAdvertisement {
                address: "AA:BB".into(),
                rssi: Some(-70),
                tx_power: None,
                local_name: Some("tag".into()),
                manufacturer_data: vec![ManufacturerData { company: 0x59, data: vec![1, 2, 3] }],
                service_data: vec![ServiceData { uuid: "fe95".into(), data: vec![] }],
                services: vec!["180a".into()],
            }),
            Source::Can(CanFrame { id: 0x1abc_def0, extended: true, rtr: false, fd: true, brs: false, esi: true }),
        ];
        for source in sources {
            let letter = DeadLetter {
                connector: "c".into(),
                route: "connectors[0].configuration.mapping[1]".into(),
                converter: "c/json".into(),
                converter_sha256: "ab".repeat(32),
                reason: "not JSON".into(),
                failed_at: 1_700_000_000_000,
                raw: RawUplink {
                    source,
                    device: Some("d".into()),
                    payload: vec![0, 159, 146, 150],
                    metadata: vec![("k".into(), "v".into())],
                    received_at: 1_699_999_999_999,
                },
            };
            let mut buf = Vec::new();
            encode_dead_letter(&letter, &mut buf);
            assert_eq!(decode_dead_letter(&buf), Ok(letter));
            for cut in 0..buf.len() {
                assert!(decode_dead_letter(&buf[..cut]).is_err(), "a letter cut at {cut} decoded");
            }
        }
    }
}
