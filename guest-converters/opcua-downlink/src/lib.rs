//! The built-in `opcua` downlink converter: [`tbgw_opcua_converter::DownlinkConverter`]
//! (attribute updates and RPCs to OPC-UA writes, reads and method calls,
//! and their replies) over the guest SDK.

use tbgw_converter_sdk::{self as sdk, ConfigError, DownlinkMessage, DownlinkRequest, RpcAnswer};
use tbgw_opcua_converter::DownlinkConverter;

struct Opcua(DownlinkConverter);

impl sdk::Downlink for Opcua {
    fn create(config: &str) -> Result<Self, ConfigError> {
        DownlinkConverter::new(config).map(Opcua)
    }

    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        self.0.convert(request)
    }

    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        self.0.reply(answer)
    }
}

sdk::export_downlink!(Opcua);
