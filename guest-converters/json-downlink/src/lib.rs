//! The built-in `json` downlink converter: the `downlink-converter` world
//! over the mapping in `tbgw-json-converter`. This file only moves data
//! between the contract's types and the library's.

wit_bindgen::generate!({ path: "../../wit", world: "downlink-converter" });

use exports::tbgw::converter::downlink::{Converter, Guest, GuestConverter};
use tbgw::converter::log::{Level, log};
use tbgw::converter::types::{ConfigError, ConvertError, DownlinkMessage, DownlinkRequest, Value};
use tbgw_json_converter as lib;

#[global_allocator]
static ALLOC: tbgw_guest_alloc::Alloc = tbgw_guest_alloc::Alloc::new();

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = JsonDownlink;
}

struct JsonDownlink(lib::DownlinkConverter);

impl GuestConverter for JsonDownlink {
    fn create(config: String) -> Result<Converter, ConfigError> {
        match lib::DownlinkConverter::new(&config) {
            Ok((converter, notices)) => {
                for notice in notices {
                    log(Level::Info, &notice);
                }
                Ok(Converter::new(JsonDownlink(converter)))
            }
            Err(e) => Err(ConfigError { field: e.field, message: e.message }),
        }
    }

    fn convert(&self, batch: Vec<DownlinkRequest>) -> Vec<Result<Vec<DownlinkMessage>, ConvertError>> {
        batch
            .into_iter()
            .map(|request| {
                let result = match request {
                    DownlinkRequest::Rpc(rpc) => self.0.convert(&lib::Request::Rpc {
                        device: &rpc.device,
                        id: rpc.id,
                        method: &rpc.method,
                        params: &rpc.params,
                    }),
                    DownlinkRequest::AttributeUpdate(update) => {
                        let entries: Vec<lib::Entry> = update
                            .entries
                            .into_iter()
                            .map(|e| lib::Entry { key: e.key, value: value(e.value) })
                            .collect();
                        self.0.convert(&lib::Request::AttributeUpdate { device: &update.device, entries: &entries })
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

fn value(v: Value) -> lib::Value {
    match v {
        Value::Boolean(b) => lib::Value::Bool(b),
        Value::Integer(i) => lib::Value::Int(i),
        Value::Double(f) => lib::Value::Float(f),
        Value::Text(s) => lib::Value::Text(s),
        Value::Json(s) => lib::Value::Json(s),
    }
}
