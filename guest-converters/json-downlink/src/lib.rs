//! The built-in `json` downlink converter: [`tbgw_json_converter::DownlinkConverter`]
//! (an MQTT `requestsMapping`) over the guest SDK.

use tbgw_converter_sdk::{self as sdk, ConfigError, DownlinkMessage, DownlinkRequest, RpcAnswer};
use tbgw_json_converter::DownlinkConverter;

struct Json(DownlinkConverter);

impl sdk::Downlink for Json {
    fn create(config: &str) -> Result<Self, ConfigError> {
        let (converter, notices) = DownlinkConverter::new(config)?;
        for notice in notices {
            sdk::log(sdk::Level::Info, &notice);
        }
        Ok(Json(converter))
    }

    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        self.0.convert(request)
    }

    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        self.0.reply(answer)
    }
}

sdk::export_downlink!(Json);
