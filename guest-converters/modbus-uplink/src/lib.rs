//! The built-in `modbus` uplink converter: the `uplink-converter` world over
//! `tbgw-modbus-converter`. This file only moves data between the
//! contract's types and the library's.

wit_bindgen::generate!({ path: "../../wit", world: "uplink-converter" });

use exports::tbgw::converter::uplink::{Converter, Guest, GuestConverter};
use tbgw::converter::types::{
    ConfigError, ConvertError, DeviceUpdate, Dropped, Entry, RawUplink, Source, Telemetry, UplinkOutput, Value,
};
use tbgw_json_converter as data;
use tbgw_modbus_converter as lib;

#[global_allocator]
static ALLOC: tbgw_guest_alloc::Alloc = tbgw_guest_alloc::Alloc::new();

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = ModbusUplink;
}

struct ModbusUplink(lib::UplinkConverter);

impl GuestConverter for ModbusUplink {
    fn create(config: String) -> Result<Converter, ConfigError> {
        lib::UplinkConverter::new(&config)
            .map(|c| Converter::new(ModbusUplink(c)))
            .map_err(|e| ConfigError { field: e.field, message: e.message })
    }

    fn convert(&self, batch: Vec<RawUplink>) -> Vec<Result<UplinkOutput, ConvertError>> {
        batch
            .iter()
            .map(|msg| {
                let Source::Registers(b) = &msg.source else {
                    return Err(ConvertError { message: "the modbus converter takes polled register blocks".into() });
                };
                let block = lib::Block {
                    unit_id: b.unit_id,
                    function_code: b.function_code,
                    address: b.address,
                    count: b.count,
                };
                let device = msg.metadata.iter().find(|(k, _)| k == "device").map(|(_, v)| v.as_str());
                self.0.convert(device, block, &msg.payload).map(output).map_err(|message| ConvertError { message })
            })
            .collect()
    }
}

fn output(out: data::UplinkOutput) -> UplinkOutput {
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

fn entries(entries: Vec<data::Entry>) -> Vec<Entry> {
    entries.into_iter().map(|e| Entry { key: e.key, value: value(e.value) }).collect()
}

fn value(v: data::Value) -> Value {
    match v {
        data::Value::Bool(b) => Value::Boolean(b),
        data::Value::Int(i) => Value::Integer(i),
        data::Value::Float(f) => Value::Double(f),
        data::Value::Text(s) => Value::Text(s),
        data::Value::Json(s) => Value::Json(s),
    }
}
