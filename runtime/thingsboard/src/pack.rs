//! Packing events into gateway API publishes: many devices and many entries
//! per publish, none larger than the payload limit.
//!
//! - `v1/gateway/telemetry`: `{"Dev A":[{"ts":1,"values":{"t":21.5}},...],"Dev B":[...]}`.
//!   Every reading is kept: two readings of a device in one publish are two
//!   entries of its array, even with the same timestamp.
//! - `v1/gateway/attributes`: `{"Dev A":{"fw":"1.2"},...}`. Attributes are
//!   state: a later value of a key replaces an earlier one in the same
//!   publish, which is what ThingsBoard would keep anyway.
//!
//! A publish also stays within what ThingsBoard's rate limits let one
//! publish cost ([`PublishLimits`]: device parts and datapoints), since a
//! publish larger than a bucket could never pass.
//!
//! A telemetry entry too large for one publish is split into entries with
//! the same timestamp (ThingsBoard merges them); a single value too large
//! for any publish is dropped and reported.

use std::collections::HashMap;
use std::fmt::Write;
use tbgw_core::{Entry, Event, Value};

pub const TELEMETRY_TOPIC: &str = "v1/gateway/telemetry";
pub const ATTRIBUTES_TOPIC: &str = "v1/gateway/attributes";

/// One publish to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub topic: &'static str,
    pub payload: String,
    /// Datapoints in it (for ThingsBoard's datapoint rate limit): values of
    /// telemetry, keys of attributes.
    pub datapoints: usize,
    /// Device parts in it: ThingsBoard counts a telemetry message for each.
    pub devices: usize,
}

/// How large one publish may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    pub max_bytes: usize,
    /// Device parts per publish.
    pub max_devices: usize,
    /// Datapoints per publish.
    pub max_datapoints: usize,
}

impl PublishLimits {
    /// Only a payload size limit.
    pub fn bytes(max_bytes: usize) -> PublishLimits {
        PublishLimits { max_bytes, max_devices: usize::MAX, max_datapoints: usize::MAX }
    }
}

/// A value that fits no publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    pub device: String,
    pub key: String,
    pub bytes: usize,
}

/// Pack `events` (in order) into publishes within `limits` each.
pub fn pack<'a>(events: impl IntoIterator<Item = &'a Event>, limits: PublishLimits) -> (Vec<Doc>, Vec<Oversized>) {
    let max_bytes = limits.max_bytes;
    let max_points = limits.max_datapoints.max(1);
    let mut telemetry = DocBuilder::new(TELEMETRY_TOPIC, limits, Shape::Array);
    let mut attributes = DocBuilder::new(ATTRIBUTES_TOPIC, limits, Shape::Object);
    let mut oversized = Vec::new();
    for e in events {
        let u = &e.update;
        let device = json_string(&u.device);
        for t in &u.telemetry {
            let ts = t.ts.unwrap_or(0);
            // Split the values into fragments that each fit a publish.
            let room = max_bytes.saturating_sub(device.len() + 8);
            let head = format!("{{\"ts\":{ts},\"values\":{{");
            let mut fragment = head.clone();
            let mut count = 0;
            for entry in &t.values {
                let pair = pair(entry);
                if head.len() + pair.len() + 2 > room {
                    oversized.push(Oversized {
                        device: u.device.clone(),
                        key: entry.key.to_string(),
                        bytes: pair.len(),
                    });
                    continue;
                }
                if count > 0 && (fragment.len() + pair.len() + 3 > room || count >= max_points) {
                    fragment.push_str("}}");
                    telemetry.add(&device, std::mem::replace(&mut fragment, head.clone()), None, count);
                    count = 0;
                }
                if count > 0 {
                    fragment.push(',');
                }
                fragment.push_str(&pair);
                count += 1;
            }
            if count > 0 {
                fragment.push_str("}}");
                telemetry.add(&device, fragment, None, count);
            }
        }
        for entry in &u.attributes {
            let pair = pair(entry);
            if pair.len() + device.len() + 8 > max_bytes {
                oversized.push(Oversized { device: u.device.clone(), key: entry.key.to_string(), bytes: pair.len() });
                continue;
            }
            attributes.add(&device, pair, Some(&entry.key), 1);
        }
    }
    let mut docs = telemetry.finish();
    docs.extend(attributes.finish());
    (docs, oversized)
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// `"device":[fragment,...]`
    Array,
    /// `"device":{fragment,...}` with fragments keyed, later keys replacing earlier.
    Object,
}

struct DeviceItems {
    key: String,
    /// Fragments, with their attribute key when the shape is `Object`.
    items: Vec<(Option<String>, String)>,
}

struct DocBuilder {
    topic: &'static str,
    max_bytes: usize,
    max_devices: usize,
    max_datapoints: usize,
    shape: Shape,
    devices: Vec<DeviceItems>,
    index: HashMap<String, usize>,
    size: usize,
    datapoints: usize,
    done: Vec<Doc>,
}

impl DocBuilder {
    fn new(topic: &'static str, limits: PublishLimits, shape: Shape) -> Self {
        DocBuilder {
            topic,
            max_bytes: limits.max_bytes,
            max_devices: limits.max_devices.max(1),
            max_datapoints: limits.max_datapoints.max(1),
            shape,
            devices: Vec::new(),
            index: HashMap::new(),
            size: 2,
            datapoints: 0,
            done: Vec::new(),
        }
    }

    /// Add a fragment for `device` (a JSON string with its quotes).
    fn add(&mut self, device: &str, fragment: String, key: Option<&str>, datapoints: usize) {
        // Replacing an attribute of this device in the current document (or
        // in the next one, when the new value does not fit).
        if let (Shape::Object, Some(key), Some(&d)) = (self.shape, key, self.index.get(device))
            && let Some(slot) = self.devices[d].items.iter_mut().find(|(k, _)| k.as_deref() == Some(key))
        {
            if self.size - slot.1.len() + fragment.len() <= self.max_bytes {
                self.size = self.size - slot.1.len() + fragment.len();
                slot.1 = fragment;
            } else {
                self.flush();
                self.add(device, fragment, Some(key), datapoints);
            }
            return;
        }
        let known = self.index.contains_key(device);
        let added = match known {
            true => fragment.len() + 1,
            false => device.len() + 3 + fragment.len() + usize::from(!self.devices.is_empty()),
        };
        let over = self.size + added > self.max_bytes
            || (!known && self.devices.len() >= self.max_devices)
            || self.datapoints + datapoints > self.max_datapoints;
        if !self.devices.is_empty() && over {
            self.flush();
            return self.add(device, fragment, key, datapoints);
        }
        match self.index.get(device) {
            Some(&d) => self.devices[d].items.push((key.map(str::to_owned), fragment)),
            None => {
                self.index.insert(device.to_owned(), self.devices.len());
                self.devices
                    .push(DeviceItems { key: device.to_owned(), items: vec![(key.map(str::to_owned), fragment)] });
            }
        }
        self.size += added;
        self.datapoints += datapoints;
    }

    fn flush(&mut self) {
        if self.devices.is_empty() {
            return;
        }
        let (open, close) = match self.shape {
            Shape::Array => ('[', ']'),
            Shape::Object => ('{', '}'),
        };
        let mut payload = String::with_capacity(self.size);
        payload.push('{');
        for (i, d) in self.devices.drain(..).enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(&d.key);
            payload.push(':');
            payload.push(open);
            for (j, (_, fragment)) in d.items.iter().enumerate() {
                if j > 0 {
                    payload.push(',');
                }
                payload.push_str(fragment);
            }
            payload.push(close);
        }
        payload.push('}');
        debug_assert_eq!(payload.len(), self.size, "size accounting");
        self.done.push(Doc { topic: self.topic, payload, datapoints: self.datapoints, devices: self.index.len() });
        self.index.clear();
        self.size = 2;
        self.datapoints = 0;
    }

    fn finish(mut self) -> Vec<Doc> {
        self.flush();
        self.done
    }
}

/// `"key":value`.
fn pair(e: &Entry) -> String {
    let mut out = json_string(&e.key);
    out.push(':');
    match &e.value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        Value::Text(s) => out.push_str(&json_string(s)),
        Value::Json(s) => out.push_str(s),
    }
    out
}

/// `s` as a JSON string.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbgw_core::{DeviceUpdate, Telemetry};

    fn event(device: &str, ts: i64, values: &[(&str, Value)], attrs: &[(&str, Value)]) -> Event {
        Event {
            connector: "c".into(),
            update: DeviceUpdate {
                device: device.into(),
                device_type: None,
                attributes: attrs.iter().map(|(k, v)| Entry::new(*k, v.clone())).collect(),
                telemetry: vec![Telemetry {
                    ts: Some(ts),
                    values: values.iter().map(|(k, v)| Entry::new(*k, v.clone())).collect(),
                }],
            },
            updates: 1,
        }
    }

    #[test]
    fn many_devices_per_publish_and_no_reading_merged() {
        let events = [
            event("A", 1, &[("t", Value::Float(20.5))], &[("fw", Value::Text("1".into()))]),
            event("B", 1, &[("t", Value::Int(3))], &[]),
            event("A", 1, &[("t", Value::Float(21.0))], &[("fw", Value::Text("2".into()))]),
        ];
        let (docs, oversized) = pack(&events, PublishLimits::bytes(65536));
        assert!(oversized.is_empty());
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].topic, TELEMETRY_TOPIC);
        assert_eq!(
            docs[0].payload,
            r#"{"A":[{"ts":1,"values":{"t":20.5}},{"ts":1,"values":{"t":21.0}}],"B":[{"ts":1,"values":{"t":3}}]}"#
        );
        assert_eq!((docs[0].datapoints, docs[0].devices), (3, 2));
        assert_eq!(docs[1].topic, ATTRIBUTES_TOPIC);
        assert_eq!(docs[1].payload, r#"{"A":{"fw":"2"}}"#);
    }

    #[test]
    fn publishes_stay_under_the_limit_and_keep_everything() {
        let events: Vec<Event> = (0..500)
            .map(|i| {
                event(&format!("dev-{}", i % 7), i, &[("v", Value::Int(i)), ("w", Value::Text("x".repeat(30)))], &[])
            })
            .collect();
        let limit = 2048;
        let (docs, oversized) = pack(&events, PublishLimits::bytes(limit));
        assert!(oversized.is_empty());
        assert!(docs.len() > 10);
        let mut readings = 0;
        for d in &docs {
            assert!(d.payload.len() <= limit, "{} bytes", d.payload.len());
            let doc: serde_json::Value = serde_json::from_str(&d.payload).expect("valid JSON");
            readings += doc.as_object().unwrap().values().map(|a| a.as_array().unwrap().len()).sum::<usize>();
        }
        assert_eq!(readings, 500);
    }

    #[test]
    fn an_entry_too_big_is_split_and_a_value_too_big_dropped() {
        let values: Vec<(String, Value)> = (0..40).map(|i| (format!("k{i}"), Value::Text("y".repeat(40)))).collect();
        let values: Vec<(&str, Value)> = values.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let mut e = event("D", 5, &values, &[]);
        e.update.telemetry[0].values.push(Entry::new("huge", Value::Text("z".repeat(5000))));
        let (docs, oversized) = pack(&[e], PublishLimits::bytes(1024));
        assert_eq!(oversized, vec![Oversized { device: "D".into(), key: "huge".into(), bytes: 5009 }]);
        let mut keys = 0;
        for d in &docs {
            assert!(d.payload.len() <= 1024);
            let doc: serde_json::Value = serde_json::from_str(&d.payload).expect("valid JSON");
            for entry in doc["D"].as_array().unwrap() {
                assert_eq!(entry["ts"], 5);
                keys += entry["values"].as_object().unwrap().len();
            }
        }
        assert_eq!(keys, 40);
    }

    #[test]
    fn no_publish_costs_more_than_a_bucket_holds() {
        let events: Vec<Event> = (0..50)
            .map(|i| {
                event(&format!("dev-{i}"), i, &[("a", Value::Int(i)), ("b", Value::Int(i)), ("c", Value::Int(i))], &[])
            })
            .collect();
        let limits = PublishLimits { max_bytes: 65536, max_devices: 8, max_datapoints: 20 };
        let (docs, _) = pack(&events, limits);
        let (mut devices, mut points) = (0, 0);
        for d in &docs {
            assert!(d.devices <= 8 && d.datapoints <= 20, "{} devices, {} datapoints", d.devices, d.datapoints);
            let doc: serde_json::Value = serde_json::from_str(&d.payload).expect("valid JSON");
            assert_eq!(doc.as_object().unwrap().len(), d.devices);
            devices += d.devices;
            points += d.datapoints;
        }
        assert_eq!((devices, points), (50, 150));
        // One reading with more values than a publish may carry is split.
        let wide: Vec<(String, Value)> = (0..45).map(|i| (format!("k{i}"), Value::Int(i))).collect();
        let wide: Vec<(&str, Value)> = wide.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let (docs, _) = pack(&[event("W", 1, &wide, &[])], limits);
        assert_eq!(docs.iter().map(|d| d.datapoints).collect::<Vec<_>>(), vec![20, 20, 5]);
    }
}
