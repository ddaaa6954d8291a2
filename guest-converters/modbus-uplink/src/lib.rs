//! The built-in `modbus` uplink converter: [`tbgw_modbus_converter::UplinkConverter`]
//! (polled register blocks) over the guest SDK.

use tbgw_converter_sdk::{self as sdk, ConfigError, ConvertedMessage, RawUplink};
use tbgw_modbus_converter::UplinkConverter;

struct Modbus(UplinkConverter);

impl sdk::Uplink for Modbus {
    fn create(config: &str) -> Result<Self, ConfigError> {
        UplinkConverter::new(config).map(Modbus)
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        self.0.convert_message(message)
    }
}

sdk::export_uplink!(Modbus);
