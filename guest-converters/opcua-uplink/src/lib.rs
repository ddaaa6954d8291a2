//! The built-in `opcua` uplink converter: [`tbgw_opcua_converter::UplinkConverter`]
//! (a node's value, status and times to one key of one device) over the
//! guest SDK.

use tbgw_converter_sdk::{self as sdk, ConfigError, ConvertedMessage, RawUplink};
use tbgw_opcua_converter::UplinkConverter;

struct Opcua(UplinkConverter);

impl sdk::Uplink for Opcua {
    fn create(config: &str) -> Result<Self, ConfigError> {
        UplinkConverter::new(config).map(Opcua)
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        self.0.convert_message(message)
    }
}

sdk::export_uplink!(Opcua);
