//! The built-in `modbus` downlink converter: [`tbgw_modbus_converter::DownlinkConverter`]
//! (writes and reads of a slave's `attributeUpdates` and `rpc` tags, and
//! the replies made of what was read) over the guest SDK.

use tbgw_converter_sdk::{self as sdk, ConfigError, DownlinkMessage, DownlinkRequest, RpcAnswer};
use tbgw_modbus_converter::DownlinkConverter;

struct Modbus(DownlinkConverter);

impl sdk::Downlink for Modbus {
    fn create(config: &str) -> Result<Self, ConfigError> {
        DownlinkConverter::new(config).map(Modbus)
    }

    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        self.0.convert(request)
    }

    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        self.0.reply(answer)
    }
}

sdk::export_downlink!(Modbus);
