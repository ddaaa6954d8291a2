//! The built-in `json` uplink converter: [`tbgw_json_converter::JsonUplink`]
//! (a mapping's `converter` object, or the devices' request topics) over the
//! guest SDK.

use tbgw_converter_sdk::{self as sdk, ConfigError, ConvertedMessage, RawUplink};
use tbgw_json_converter::{JsonUplink, Message};

struct Json(JsonUplink);

impl sdk::Uplink for Json {
    fn create(config: &str) -> Result<Self, ConfigError> {
        let (converter, notices) = JsonUplink::new(config)?;
        for notice in notices {
            sdk::log(sdk::Level::Info, &notice);
        }
        Ok(Json(converter))
    }

    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> {
        self.0.convert(&Message::from(message))
    }
}

sdk::export_uplink!(Json);
