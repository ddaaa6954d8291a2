//! A test guest that breaks the contract where its types cannot forbid it,
//! written on the raw 0.2 bindings (the SDK never does this): the host must
//! fail the call as a broken contract, drop the instance, and never panic.
//!
//! Payloads: `bad-key`: an entry naming key 7 of an empty key table;
//! `short`: no result for the batch; anything else: one update for device
//! `breaker` with the `ok` attribute (key 0 of a table of one).

wit_bindgen::generate!({
    path: "../../../wit",
    world: "uplink-converter",
});

use exports::tbgw::converter::uplink::{Converter, Guest, GuestConverter};
use tbgw::converter::types::{
    ConfigError, DeviceUpdate, Entry, RawUplink, Telemetry, UplinkOutput, UplinkResults, Value,
};

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = Breaker;
}

struct Breaker;

impl GuestConverter for Breaker {
    fn create(_config: String) -> Result<Converter, ConfigError> {
        Ok(Converter::new(Breaker))
    }

    fn convert(&self, batch: Vec<RawUplink>) -> UplinkResults {
        if batch.iter().any(|m| m.payload == b"short") {
            return UplinkResults { keys: Vec::new(), results: Vec::new() };
        }
        let bad = batch.iter().any(|m| m.payload == b"bad-key");
        let output = |key| UplinkOutput {
            updates: vec![DeviceUpdate {
                device: "breaker".into(),
                device_type: None,
                attributes: vec![Entry { key, value: Value::Boolean(true) }],
                telemetry: Vec::<Telemetry>::new(),
            }],
            requests: Vec::new(),
            dropped: Vec::new(),
        };
        let (keys, key) = if bad { (Vec::new(), 7) } else { (vec!["ok".to_owned()], 0) };
        UplinkResults { keys, results: batch.iter().map(|_| Ok(output(key))).collect() }
    }
}
