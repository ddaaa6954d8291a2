//! The built-in `can` uplink converter: [`tbgw_can_converter::UplinkConverter`]
//! (frames decoded by their items' value specs and expressions) over the
//! guest SDK.

use tbgw_can_converter::UplinkConverter;
use tbgw_converter_sdk::{self as sdk, ConfigError, ConvertedMessage, RawUplink};

struct Can(UplinkConverter);

impl sdk::Uplink for Can {
    fn create(config: &str) -> Result<Self, ConfigError> {
        UplinkConverter::new(config).map(Can)
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        self.0.convert_message(message)
    }
}

sdk::export_uplink!(Can);
