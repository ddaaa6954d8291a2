//! The JSON mapping run natively: the same library the `json` component is
//! built from, compiled for the host, handing over the same result type the
//! runtime hands the pipeline. This is the benchmark's baseline.

use tbgw_core::{ConvertedMessage, DeviceUpdate, Dropped, Entry, RawUplink, Source, Telemetry, Value};
use tbgw_json_converter as lib;

/// The mapping, configured.
pub struct Native(lib::UplinkConverter);

impl Native {
    pub fn new(config: &str) -> Result<Native, lib::ConfigError> {
        lib::UplinkConverter::new(config).map(|(c, _)| Native(c))
    }

    /// Convert one message.
    pub fn convert(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        let topic = match &msg.source {
            Source::Topic(t) => Some(t.as_str()),
            _ => None,
        };
        self.0.convert(&lib::Message { topic, payload: &msg.payload }).map(into_core)
    }
}

fn into_core(out: lib::UplinkOutput) -> ConvertedMessage {
    ConvertedMessage {
        updates: out
            .updates
            .into_iter()
            .map(|u| DeviceUpdate {
                device: u.device,
                device_type: u.device_type,
                attributes: entries(u.attributes),
                telemetry: u.telemetry.into_iter().map(|t| Telemetry { ts: t.ts, values: entries(t.values) }).collect(),
            })
            .collect(),
        dropped: out.dropped.into_iter().map(|d| Dropped { key: d.key, reason: d.reason }).collect(),
    }
}

fn entries(entries: Vec<lib::Entry>) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|e| Entry {
            key: e.key,
            value: match e.value {
                lib::Value::Bool(b) => Value::Bool(b),
                lib::Value::Int(i) => Value::Int(i),
                lib::Value::Float(f) => Value::Float(f),
                lib::Value::Text(s) => Value::Text(s),
                lib::Value::Json(s) => Value::Json(s),
            },
        })
        .collect()
}
