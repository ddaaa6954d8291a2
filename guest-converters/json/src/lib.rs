//! The built-in JSON converters' mapping logic, in plain Rust.
//!
//! tbgw's built-in `json` converters are WebAssembly components
//! (`guest-converters/json-uplink`, `guest-converters/json-downlink`); this
//! crate is what they run, free of any WebAssembly glue, so that it can be
//! unit-tested natively and measured natively as the benchmark's baseline.
//!
//! - [`uplink`]: device JSON to ThingsBoard data, configured as the
//!   ThingsBoard IoT Gateway's JSON converter (3.x);
//! - [`requests`]: devices' own requests (connect, disconnect, attribute
//!   requests) recognised on their topics, configured as the `connectRequests`,
//!   `disconnectRequests` and `attributeRequests` of an MQTT `requestsMapping`;
//! - [`downlink`]: RPCs, shared attribute updates and the answers to
//!   attribute requests to device messages, and the devices' answers to
//!   ThingsBoard's replies, configured as the ThingsBoard IoT Gateway's MQTT
//!   `requestsMapping`.
//!
//! The building blocks: [`json`] (a payload tree that borrows its strings),
//! [`path`] and [`template`] (the `${...}` expressions), [`coerce`] (value
//! types), [`time`] (timestamps); the config reader is `tbgw_data::config`.

pub mod coerce;
pub mod downlink;
pub mod json;
pub mod path;
pub mod requests;
pub mod template;
pub mod time;
pub mod uplink;

pub use downlink::DownlinkConverter;
pub use tbgw_data::ConfigError;
use tbgw_data::config;
pub use uplink::{Message, UplinkConverter};

/// The data model, tbgw's own ([`tbgw_data`]): the converters' results are
/// the very values the host hands on.
pub use tbgw_data::{ConvertedMessage, DeviceRequest, DeviceUpdate, Dropped, Entry, Key, Telemetry, Value};

/// The `json` uplink converter as configs name it: a mapping's `converter`
/// object ([`UplinkConverter`]), or `{"requestsMapping": {...}}` for the
/// devices' request topics ([`requests::RequestConverter`]).
#[derive(Debug)]
pub enum JsonUplink {
    Mapping(Box<UplinkConverter>),
    Requests(requests::RequestConverter),
}

impl JsonUplink {
    /// Build it from its config; the notices are about keys accepted unused.
    pub fn new(config_text: &str) -> Result<(JsonUplink, Vec<String>), ConfigError> {
        let doc = config::parse_document(config_text)?;
        if doc.get("requestsMapping").is_some() {
            return requests::RequestConverter::new(config_text).map(|r| (JsonUplink::Requests(r), Vec::new()));
        }
        UplinkConverter::new(config_text).map(|(c, notices)| (JsonUplink::Mapping(Box::new(c)), notices))
    }

    /// Convert one message.
    pub fn convert(&self, msg: &Message<'_>) -> Result<ConvertedMessage, String> {
        match self {
            JsonUplink::Mapping(c) => c.convert(msg),
            JsonUplink::Requests(r) => r.convert(msg),
        }
    }
}
