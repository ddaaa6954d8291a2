//! The built-in `modbus` downlink converter: the `downlink-converter` world
//! over `tbgw-modbus-converter`. This file only moves data between the
//! contract's types and the library's.

wit_bindgen::generate!({ path: "../../wit", world: "downlink-converter" });

use exports::tbgw::converter::downlink::{Converter, Guest, GuestConverter};
use tbgw::converter::types::{ConfigError, ConvertError, DownlinkMessage, DownlinkRequest, Value};
use tbgw_json_converter as data;
use tbgw_modbus_converter as lib;

#[global_allocator]
static ALLOC: tbgw_guest_alloc::Alloc = tbgw_guest_alloc::Alloc::new();

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = ModbusDownlink;
}

struct ModbusDownlink(lib::DownlinkConverter);

impl GuestConverter for ModbusDownlink {
    fn create(config: String) -> Result<Converter, ConfigError> {
        lib::DownlinkConverter::new(&config)
            .map(|c| Converter::new(ModbusDownlink(c)))
            .map_err(|e| ConfigError { field: e.field, message: e.message })
    }

    fn convert(&self, batch: Vec<DownlinkRequest>) -> Vec<Result<Vec<DownlinkMessage>, ConvertError>> {
        batch
            .into_iter()
            .map(|request| {
                let result = match request {
                    DownlinkRequest::Rpc(rpc) => self.0.rpc(&rpc.device, &rpc.method, &rpc.params),
                    DownlinkRequest::AttributeUpdate(update) => {
                        let entries: Vec<data::Entry> = update
                            .entries
                            .into_iter()
                            .map(|e| data::Entry { key: e.key, value: value(e.value) })
                            .collect();
                        self.0.attribute_update(&update.device, &entries)
                    }
                };
                result
                    .map(|messages| {
                        messages
                            .into_iter()
                            .map(|m| DownlinkMessage { target: m.target, payload: m.payload, metadata: m.metadata })
                            .collect()
                    })
                    .map_err(|message| ConvertError { message })
            })
            .collect()
    }
}

fn value(v: Value) -> data::Value {
    match v {
        Value::Boolean(b) => data::Value::Bool(b),
        Value::Integer(i) => data::Value::Int(i),
        Value::Double(f) => data::Value::Float(f),
        Value::Text(s) => data::Value::Text(s),
        Value::Json(s) => data::Value::Json(s),
    }
}
