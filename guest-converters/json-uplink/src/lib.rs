//! The built-in `json` uplink converter: the `uplink-converter` world over
//! the mapping in `tbgw-json-converter`. This file only moves data between
//! the contract's types and the library's.

wit_bindgen::generate!({ path: "../../wit", world: "uplink-converter" });

use exports::tbgw::converter::uplink::{Converter, Guest, GuestConverter};
use tbgw::converter::log::{Level, log};
use tbgw::converter::types::{
    ConfigError, ConvertError, DeviceUpdate, Dropped, Entry, RawUplink, Source, Telemetry, UplinkOutput, Value,
};
use tbgw_json_converter as lib;

#[global_allocator]
static ALLOC: tbgw_guest_alloc::Alloc = tbgw_guest_alloc::Alloc::new();

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = JsonUplink;
}

struct JsonUplink(lib::UplinkConverter);

impl GuestConverter for JsonUplink {
    fn create(config: String) -> Result<Converter, ConfigError> {
        match lib::UplinkConverter::new(&config) {
            Ok((converter, notices)) => {
                for notice in notices {
                    log(Level::Info, &notice);
                }
                Ok(Converter::new(JsonUplink(converter)))
            }
            Err(e) => Err(ConfigError { field: e.field, message: e.message }),
        }
    }

    fn convert(&self, batch: Vec<RawUplink>) -> Vec<Result<UplinkOutput, ConvertError>> {
        batch
            .iter()
            .map(|msg| {
                let topic = match &msg.source {
                    Source::Topic(t) => Some(t.as_str()),
                    _ => None,
                };
                self.0
                    .convert(&lib::Message { topic, payload: &msg.payload })
                    .map(output)
                    .map_err(|message| ConvertError { message })
            })
            .collect()
    }
}

fn output(out: lib::UplinkOutput) -> UplinkOutput {
    UplinkOutput {
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
    entries.into_iter().map(|e| Entry { key: e.key, value: value(e.value) }).collect()
}

fn value(v: lib::Value) -> Value {
    match v {
        lib::Value::Bool(b) => Value::Boolean(b),
        lib::Value::Int(i) => Value::Integer(i),
        lib::Value::Float(f) => Value::Double(f),
        lib::Value::Text(s) => Value::Text(s),
        lib::Value::Json(s) => Value::Json(s),
    }
}
