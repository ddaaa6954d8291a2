//! The sensor example in Rust: a sensor's JSON report to ThingsBoard
//! attributes (model, firmware, location) and telemetry (every reading, with
//! its own type), at the report's own time when it says. The Python and
//! JavaScript versions beside it give the same output (`../expected.jsonl`).

use tbgw_converter_sdk::{
    self as sdk, ConfigError, ConvertedMessage, DeviceUpdate, Dropped, Entry, RawUplink, Telemetry, Value,
};

struct Sensor {
    device_type: String,
}

/// The entries of `values`; what has no ThingsBoard form goes to `dropped`.
fn entries<'a>(
    values: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
    dropped: &mut Vec<Dropped>,
) -> Vec<Entry> {
    let mut out = Vec::new();
    for (key, v) in values {
        match Value::from_json(v) {
            Ok(value) => out.push(Entry::new(key.as_str(), value)),
            Err(reason) => dropped.push(Dropped { key: key.clone(), reason }),
        }
    }
    out
}

impl sdk::Uplink for Sensor {
    fn create(config: &str) -> Result<Self, ConfigError> {
        let config = sdk::config::parse_document(config)?;
        let mut config = sdk::config::Obj::new("", &config)?;
        let device_type = config.opt_str("deviceType")?.unwrap_or("sensor").to_owned();
        Ok(Sensor { device_type })
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        let report: serde_json::Value =
            serde_json::from_slice(&message.payload).map_err(|e| format!("not JSON: {e}"))?;
        let report = report.as_object().ok_or("expected a JSON object")?;
        let serial = report.get("serial").and_then(|s| s.as_str()).ok_or("missing `serial`")?;
        let ts = match report.get("ts") {
            None => None,
            Some(ts) => Some(ts.as_i64().ok_or("`ts` must be ms since the epoch")?),
        };
        let empty = serde_json::Map::new();
        let readings = match report.get("readings") {
            None => &empty,
            Some(r) => r.as_object().ok_or("`readings` must be an object")?,
        };
        let mut out = ConvertedMessage::default();
        let attributes = entries(
            ["model", "firmware", "location"].iter().filter_map(|k| report.get_key_value(*k)),
            &mut out.dropped,
        );
        let values = entries(readings.iter(), &mut out.dropped);
        let telemetry = if values.is_empty() { Vec::new() } else { vec![Telemetry { ts, values }] };
        out.updates.push(DeviceUpdate {
            device: serial.to_owned(),
            device_type: Some(self.device_type.clone()),
            attributes,
            telemetry,
        });
        Ok(out)
    }
}

sdk::export_uplink!(Sensor);
