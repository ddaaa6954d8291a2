//! Your converter: edit `create` and `convert`.
//!
//! `create` gets the converter's config (the `converter` object of the
//! mapping in mqtt.json, as JSON text) once per instance; return a
//! `ConfigError` that names a field that is wrong. `convert` gets one device
//! message and returns what ThingsBoard gets from it, or why nothing can be
//! made of it (that message fails; the others of the batch convert).
//!
//! Test the logic natively: `cargo test`. Then `./build.sh` and `./test.sh`
//! build the component and run it in `tbgw converter test`.

use tbgw_converter_sdk::{
    self as sdk, ConfigError, ConvertedMessage, DeviceUpdate, Dropped, Entry, RawUplink, Telemetry, Value,
};

struct Converter {
    device_type: String,
}

impl sdk::Uplink for Converter {
    fn create(config: &str) -> Result<Self, ConfigError> {
        let config = sdk::config::parse_document(config)?;
        let mut config = sdk::config::Obj::new("", &config)?;
        let device_type = config.opt_str("deviceType")?.unwrap_or("default").to_owned();
        Ok(Converter { device_type })
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        let data: serde_json::Value = serde_json::from_slice(&message.payload).map_err(|e| format!("not JSON: {e}"))?;
        let device = data["serial"].as_str().ok_or("missing `serial`")?;
        let mut out = ConvertedMessage::default();
        let mut values = Vec::new();
        for key in ["temperature", "humidity"] {
            match Value::from_json(&data[key]) {
                Ok(value) => values.push(Entry::new(key, value)),
                Err(reason) => out.dropped.push(Dropped { key: key.to_owned(), reason }),
            }
        }
        out.updates.push(DeviceUpdate {
            device: device.to_owned(),
            device_type: Some(self.device_type.clone()),
            attributes: Vec::new(),
            telemetry: vec![Telemetry { ts: None, values }],
        });
        Ok(out)
    }
}

sdk::export_uplink!(Converter);

#[cfg(test)]
mod tests {
    use super::*;
    use sdk::Uplink;

    #[test]
    fn a_reading() {
        let converter = Converter::create(r#"{"deviceType": "thermometer"}"#).expect("config");
        let message = RawUplink {
            source: sdk::Source::mqtt("sensors/SN-001/data"),
            device: None,
            payload: br#"{"serial": "SN-001", "temperature": 19.0, "humidity": 48}"#.to_vec(),
            metadata: Vec::new(),
            received_at: 0,
        };
        let out = converter.convert(&message).expect("converts");
        assert_eq!(out.updates[0].device, "SN-001");
        assert_eq!(out.updates[0].telemetry[0].values[0].value, Value::Float(19.0));
        assert_eq!(out.updates[0].telemetry[0].values[1].value, Value::Int(48));
    }
}
