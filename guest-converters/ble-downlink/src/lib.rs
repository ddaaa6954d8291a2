//! The built-in `ble` downlink converter: [`tbgw_ble_converter::DownlinkConverter`]
//! (attribute updates and RPCs as reads, writes and scans, and their replies) over
//! the guest SDK.

use tbgw_ble_converter::DownlinkConverter;
use tbgw_converter_sdk::{self as sdk, ConfigError, DownlinkMessage, DownlinkRequest, RpcAnswer};

struct Ble(DownlinkConverter);

impl sdk::Downlink for Ble {
    fn create(config: &str) -> Result<Self, ConfigError> {
        DownlinkConverter::new(config).map(Ble)
    }

    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        self.0.convert(request)
    }

    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        self.0.reply(answer)
    }
}

sdk::export_downlink!(Ble);
