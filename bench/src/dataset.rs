//! 1,000 realistic device messages (generated deterministically) and the
//! `json` converter config that maps them: the shapes a building or factory
//! gateway sees from MQTT sensors, with nested objects, arrays, numbers in
//! text, ISO timestamps, and now and then a missing or null field.

use std::time::Duration;
use tbgw_core::{RawUplink, Source};
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, Runtime, RuntimeConfig, UplinkConverter};

/// The built-in `json` component loaded with [`CONFIG`], in a runtime of its
/// own, with a deadline long enough for any machine.
pub fn wasm_converter() -> (Runtime, UplinkConverter) {
    let rt = Runtime::new(RuntimeConfig { max_instances: 8, ..RuntimeConfig::default() }).expect("runtime");
    let spec = ConverterSpec {
        component: ComponentSource::Builtin { name: "json", wasm: tbgw_guests::JSON_UPLINK },
        config: CONFIG.into(),
        limits: Limits { per_message: Duration::from_secs(10), ..Limits::default() },
    };
    let converter = rt.uplink("json", spec).expect("load the json converter");
    (rt, converter)
}

/// The converter config: device name and profile from the message, three
/// attributes (one a template), seven time series (nested paths, an array
/// index, a numeric string, a boolean), and the timestamp from an ISO field.
pub const CONFIG: &str = r#"{
  "type": "json",
  "deviceInfo": {
    "deviceNameExpressionSource": "message", "deviceNameExpression": "${meta.serial}",
    "deviceProfileExpressionSource": "message", "deviceProfileExpression": "${meta.kind}"
  },
  "attributes": [
    {"type": "string", "key": "model", "value": "${meta.model}"},
    {"type": "string", "key": "firmware", "value": "${meta.fw}"},
    {"type": "string", "key": "location", "value": "${site.building}/${site.floor}/${site.room}"}
  ],
  "timeseries": [
    {"type": "double", "key": "temperature", "value": "${data.temperature}", "tsField": "${time}"},
    {"type": "double", "key": "humidity", "value": "${data.humidity}", "tsField": "${time}"},
    {"type": "double", "key": "co2", "value": "${data.co2}", "tsField": "${time}"},
    {"type": "integer", "key": "rssi", "value": "${radio.rssi}", "tsField": "${time}"},
    {"type": "double", "key": "battery", "value": "${power.battery}", "tsField": "${time}"},
    {"type": "boolean", "key": "occupied", "value": "${data.occupied}", "tsField": "${time}"},
    {"type": "double", "key": "p1", "value": "${data.samples[0]}", "tsField": "${time}"}
  ]
}"#;

/// A small deterministic generator (xorshift), so every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn float(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() % 10_000) as f64 / 10_000.0 * (hi - lo)
    }
}

/// The messages, as an MQTT connector would hand them over.
pub fn messages(n: usize) -> Vec<RawUplink> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let kinds = ["thermostat", "air-quality", "room-sensor"];
    let models = ["TH-200", "AQ-9", "RS-1"];
    (0..n)
        .map(|i| {
            let device = rng.below(200);
            let kind = rng.below(3) as usize;
            let second = 1_700_000_000 + i as u64;
            let (h, m, s) = ((second / 3600) % 24, (second / 60) % 60, second % 60);
            // Now and then a field is missing, null, or a number sent as text.
            let humidity = match rng.below(20) {
                0 => "null".to_owned(),
                1 => format!("\"{:.1}\"", rng.float(20.0, 80.0)),
                _ => format!("{:.1}", rng.float(20.0, 80.0)),
            };
            let co2 = if rng.below(10) == 0 { String::new() } else { format!(r#""co2": {},"#, 400 + rng.below(1200)) };
            let payload = format!(
                r#"{{"meta": {{"serial": "SN-{device:05}", "kind": "{kind}", "model": "{model}", "fw": "3.{minor}.{patch}"}},
"site": {{"building": "B{b}", "floor": {floor}, "room": "R{room:03}"}},
"time": "2023-11-14T{h:02}:{m:02}:{s:02}.{ms:03}Z",
"data": {{"temperature": {t:.2}, "humidity": {humidity}, {co2} "occupied": {occ}, "samples": [{p1:.3}, {p2:.3}, {p3:.3}]}},
"radio": {{"rssi": -{rssi}, "snr": {snr:.1}, "channel": {ch}}},
"power": {{"battery": {bat:.1}, "source": "battery"}}}}"#,
                kind = kinds[kind],
                model = models[kind],
                minor = rng.below(10),
                patch = rng.below(20),
                b = 1 + rng.below(4),
                floor = rng.below(12),
                room = rng.below(400),
                ms = rng.below(1000),
                t = rng.float(15.0, 30.0),
                occ = rng.below(2) == 1,
                p1 = rng.float(0.0, 5.0),
                p2 = rng.float(0.0, 5.0),
                p3 = rng.float(0.0, 5.0),
                rssi = 40 + rng.below(60),
                snr = rng.float(-5.0, 12.0),
                ch = rng.below(16),
                bat = rng.float(2.8, 3.6),
            );
            RawUplink {
                source: Source::mqtt(format!("building/sensors/SN-{device:05}/data")),
                device: None,
                payload: payload.into_bytes(),
                metadata: Vec::new(),
                received_at: 1_700_000_000_000 + i as i64,
            }
        })
        .collect()
}
