//! A bench guest: for every message, the shape the `json` converter gives
//! the benchmark's data set (a device and its profile, three text
//! attributes, seven numbers at one timestamp), made without reading the
//! payload, so that what a call costs is the contract's boundary alone
//! (over the guest SDK, contract 0.2). `echo-0.1` is its twin against 0.1.

use tbgw_converter_sdk::{
    self as sdk, ConfigError, ConvertedMessage, DeviceUpdate, Entry, Key, RawUplink, Telemetry, Value,
};

struct Echo {
    attributes: [Key; 3],
    values: [Key; 7],
}

impl sdk::Uplink for Echo {
    fn create(_config: &str) -> Result<Self, ConfigError> {
        Ok(Echo {
            attributes: ["model", "firmware", "location"].map(Key::from),
            values: ["temperature", "humidity", "co2", "rssi", "battery", "occupied", "p1"].map(Key::from),
        })
    }

    fn convert(&self, m: &RawUplink) -> Result<ConvertedMessage, String> {
        let n = m.payload.len() as i64;
        let text = ["TH-200", "3.4.11", "B2/7/R123"];
        let attributes =
            self.attributes.iter().zip(text).map(|(k, t)| Entry { key: k.clone(), value: Value::Text(t.into()) });
        let values = self.values.iter().enumerate().map(|(i, k)| Entry {
            key: k.clone(),
            value: if i == 3 {
                Value::Int(-n)
            } else if i == 5 {
                Value::Bool(true)
            } else {
                Value::Float(n as f64 / 7.0)
            },
        });
        Ok(ConvertedMessage {
            updates: vec![DeviceUpdate {
                device: "SN-00042".into(),
                device_type: Some("thermostat".into()),
                attributes: attributes.collect(),
                telemetry: vec![Telemetry { ts: Some(m.received_at), values: values.collect() }],
            }],
            ..ConvertedMessage::default()
        })
    }
}

sdk::export_uplink!(Echo);
