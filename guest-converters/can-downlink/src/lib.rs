//! The built-in `can` downlink converter: [`tbgw_can_converter::DownlinkConverter`]
//! (attribute updates and RPCs encoded into frames, and their replies) over
//! the guest SDK.

use tbgw_can_converter::DownlinkConverter;
use tbgw_converter_sdk::{self as sdk, ConfigError, DownlinkMessage, DownlinkRequest, RpcAnswer};

struct Can(DownlinkConverter);

impl sdk::Downlink for Can {
    fn create(config: &str) -> Result<Self, ConfigError> {
        DownlinkConverter::new(config).map(Can)
    }

    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        self.0.convert(request)
    }

    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        self.0.reply(answer)
    }
}

sdk::export_downlink!(Can);
