//! A bench guest: `echo` built against contract 0.1.0 with wit-bindgen
//! alone (as 0.1's built-in converters were): the same output, made
//! without reading the payload, so that the bench measures 0.1's boundary
//! beside 0.2's.

wit_bindgen::generate!({ path: "../../../wit/0.1.0", world: "uplink-converter" });

use exports::tbgw::converter::uplink::{Converter, Guest, GuestConverter};
use tbgw::converter::types::{
    ConfigError, ConvertError, DeviceUpdate, Entry, RawUplink, Telemetry, UplinkOutput, Value,
};

#[global_allocator]
static ALLOC: tbgw_guest_alloc::Alloc = tbgw_guest_alloc::Alloc::new();

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = Echo;
}

struct Echo;

impl GuestConverter for Echo {
    fn create(_config: String) -> Result<Converter, ConfigError> {
        Ok(Converter::new(Echo))
    }

    fn convert(&self, batch: Vec<RawUplink>) -> Vec<Result<UplinkOutput, ConvertError>> {
        batch
            .iter()
            .map(|m| {
                let n = m.payload.len() as i64;
                let text = [("model", "TH-200"), ("firmware", "3.4.11"), ("location", "B2/7/R123")];
                let attributes = text.iter().map(|(k, t)| Entry { key: (*k).into(), value: Value::Text((*t).into()) });
                let keys = ["temperature", "humidity", "co2", "rssi", "battery", "occupied", "p1"];
                let values = keys.iter().enumerate().map(|(i, k)| Entry {
                    key: (*k).into(),
                    value: if i == 3 {
                        Value::Integer(-n)
                    } else if i == 5 {
                        Value::Boolean(true)
                    } else {
                        Value::Double(n as f64 / 7.0)
                    },
                });
                Ok(UplinkOutput {
                    updates: vec![DeviceUpdate {
                        device: "SN-00042".into(),
                        device_type: Some("thermostat".into()),
                        attributes: attributes.collect(),
                        telemetry: vec![Telemetry { ts: Some(m.received_at), values: values.collect() }],
                    }],
                    dropped: Vec::new(),
                })
            })
            .collect()
    }
}
