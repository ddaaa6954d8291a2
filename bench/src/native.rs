//! The JSON mapping run natively: the same library the `json` component is
//! built from, compiled for the host, giving the very result type the
//! runtime hands the pipeline (the data model is one for both). This is the
//! benchmark's baseline.

use tbgw_core::{ConvertedMessage, RawUplink};
use tbgw_json_converter as lib;

/// The mapping, configured.
pub struct Native(lib::JsonUplink);

impl Native {
    pub fn new(config: &str) -> Result<Native, lib::ConfigError> {
        lib::JsonUplink::new(config).map(|(c, _)| Native(c))
    }

    /// Convert one message.
    pub fn convert(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        self.0.convert(&lib::Message::from(msg))
    }
}
