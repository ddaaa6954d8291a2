//! The built-in `ble` uplink converter: [`tbgw_ble_converter::UplinkConverter`]
//! (characteristic values and advertisements decoded by their keys' valueExpression and compute) over the
//! guest SDK.

use tbgw_ble_converter::UplinkConverter;
use tbgw_converter_sdk::{self as sdk, ConfigError, ConvertedMessage, RawUplink};

struct Ble(UplinkConverter);

impl sdk::Uplink for Ble {
    fn create(config: &str) -> Result<Self, ConfigError> {
        UplinkConverter::new(config).map(Ble)
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        self.0.convert_message(message)
    }
}

sdk::export_uplink!(Ble);
