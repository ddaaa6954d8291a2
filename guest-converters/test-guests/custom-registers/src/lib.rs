//! A test guest: a user's own Modbus uplink converter. Every register of a
//! polled block becomes telemetry `reg<address>` (its value as an unsigned
//! 16-bit number) of the block's device, with the attribute `decoder:
//! "custom"`, so that a test can tell its output from the built-in one.

use tbgw_converter_sdk::{
    self as sdk, ConfigError, ConvertedMessage, DeviceUpdate, Entry, RawUplink, Source, Telemetry, Value,
};

struct Registers;

impl sdk::Uplink for Registers {
    fn create(_config: &str) -> Result<Self, ConfigError> {
        Ok(Registers)
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        let Source::Registers(block) = &message.source else { return Err("custom: register blocks only".into()) };
        let device = message.device.clone().ok_or("custom: the block names no device")?;
        let values = message
            .payload
            .chunks(2)
            .enumerate()
            .map(|(i, c)| {
                let v = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
                Entry::new(format!("reg{}", usize::from(block.address) + i), Value::Int(i64::from(v)))
            })
            .collect();
        Ok(ConvertedMessage {
            updates: vec![DeviceUpdate {
                device,
                device_type: None,
                attributes: vec![Entry::new("decoder", Value::Text("custom".into()))],
                telemetry: vec![Telemetry { ts: None, values }],
            }],
            ..ConvertedMessage::default()
        })
    }
}

sdk::export_uplink!(Registers);
