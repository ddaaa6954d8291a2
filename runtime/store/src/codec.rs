//! The on-disk form of events and device records: a compact binary encoding,
//! versioned by its first byte.
//!
//! ```text
//! event   = version:u8(=1) connector:str device:str type:opt<str>
//!           attributes:list<entry> telemetry:list<(ts:i64 values:list<entry>)>
//! entry   = key:str value
//! value   = tag:u8 payload      0 false, 1 true, 2 i64 LE, 3 f64 LE, 4 text:str, 5 json:str
//! str     = len:varint bytes (UTF-8)      list<T> = count:varint T*
//! opt<T>  = 0 | 1 T
//! device  = version:u8(=1) connector:str type:opt<str>
//! ```
//!
//! A stored telemetry entry always has its timestamp: the pipeline fills in
//! the receipt time before storing.

use tbgw_core::{DeviceRecord, DeviceUpdate, Entry, Event, Telemetry, Value};

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
    if !r.0.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(Event { connector, update: DeviceUpdate { device, device_type, attributes, telemetry } })
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
        let n = self.count()?;
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError("text is not UTF-8"))
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
        }
    }

    #[test]
    fn events_round_trip() {
        let e = sample();
        let mut buf = Vec::new();
        encode_event(&e, &mut buf);
        assert_eq!(decode_event(&buf), Ok(e));
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
}
