//! The guest SDK: write a tbgw converter in Rust as a plain trait over
//! tbgw's own data model ([`tbgw_data`]), and export it as a WebAssembly
//! component with one macro.
//!
//! ```ignore
//! use tbgw_converter_sdk::{ConfigError, ConvertedMessage, RawUplink, Uplink, export_uplink};
//!
//! struct Thermometer;
//!
//! impl Uplink for Thermometer {
//!     fn create(config: &str) -> Result<Self, ConfigError> { Ok(Thermometer) }
//!     fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String> { todo!() }
//! }
//!
//! export_uplink!(Thermometer);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` (crate type
//! `cdylib`); the `.wasm` is the converter.
//!
//! This crate owns everything between a converter's logic and the contract
//! (`wit/converter.wit`): the one `generate!` of each world, the
//! conversions between the contract's types and the data model, the
//! batching (a converter is written message by message; tbgw calls it with
//! batches, and one message's error never fails its neighbours), the key
//! table of `uplink-results` (every distinct key of a batch crosses the
//! boundary once, however many messages use it), and the global allocator
//! (feature `alloc`, on by default: a size-class allocator for
//! single-threaded guests, `guest-converters/alloc`).
//!
//! The built-in converters are their pure library (tested and benchmarked
//! natively) plus a few lines over this crate. The data model comes with it
//! (re-exported from `tbgw-data`), and [`config`], the reader of a JSON
//! config whose errors name the field, as the built-in converters read
//! theirs.

pub use tbgw_data::*;

#[cfg(feature = "alloc")]
#[global_allocator]
static ALLOC: tbgw_guest_alloc::Alloc = tbgw_guest_alloc::Alloc::new();

/// The contract's bindings, one module per world; the downlink world uses
/// the uplink world's types. Not for converters to use directly: the traits
/// and the macros of this crate are the interface.
#[doc(hidden)]
pub mod bindings {
    pub mod uplink {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "uplink-converter",
            pub_export_macro: true,
            export_macro_name: "export_uplink_world",
            default_bindings_module: "$crate::bindings::uplink",
        });
    }
    pub mod downlink {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "downlink-converter",
            pub_export_macro: true,
            export_macro_name: "export_downlink_world",
            default_bindings_module: "$crate::bindings::downlink",
            with: {
                "tbgw:converter/types@0.2.0": crate::bindings::uplink::tbgw::converter::types,
                "tbgw:converter/log@0.2.0": crate::bindings::uplink::tbgw::converter::log,
            },
        });
    }
}

mod convert;
mod keys;

use bindings::uplink::tbgw::converter::types as wit;

/// How much a log line matters.
pub use bindings::uplink::tbgw::converter::log::Level;

/// Write one line to tbgw's log, tagged with the converter's name. tbgw caps
/// the lines of one call.
pub fn log(level: Level, message: &str) {
    bindings::uplink::tbgw::converter::log::log(level, message);
}

/// An uplink converter: device data to ThingsBoard data.
pub trait Uplink: Sized + 'static {
    /// Build the converter from its JSON config, once per instance. Notices
    /// (keys accepted but unused) go to [`log`].
    fn create(config: &str) -> Result<Self, ConfigError>;

    /// Convert one message: the device updates (and the device's own
    /// requests) it makes, and what was left out of them; or why nothing
    /// could be made of it, naming the field or the byte.
    fn convert(&self, message: &RawUplink) -> Result<ConvertedMessage, String>;
}

/// A downlink converter: ThingsBoard's requests to device messages, and the
/// devices' answers to ThingsBoard's replies.
pub trait Downlink: Sized + 'static {
    /// Build the converter from its JSON config, once per instance.
    fn create(config: &str) -> Result<Self, ConfigError>;

    /// The messages that serve one request (none is a valid answer), or why
    /// it cannot be served (tbgw reports it to ThingsBoard).
    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String>;

    /// ThingsBoard's reply to an RPC (the JSON text of its `data`) from what
    /// the device answered. By default the answer's payload as JSON, its text
    /// as a JSON string otherwise, `{"success":true}` when nothing answers.
    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        Ok(answer.plain_reply())
    }
}

/// Export `$t` (an [`Uplink`]) as this component's uplink converter.
#[macro_export]
macro_rules! export_uplink {
    ($t:ty) => {
        #[doc(hidden)]
        type __TbgwUplinkComponent = $crate::UplinkComponent<$t>;
        $crate::bindings::uplink::export_uplink_world!(__TbgwUplinkComponent with_types_in $crate::bindings::uplink);
    };
}

/// Export `$t` (a [`Downlink`]) as this component's downlink converter.
#[macro_export]
macro_rules! export_downlink {
    ($t:ty) => {
        #[doc(hidden)]
        type __TbgwDownlinkComponent = $crate::DownlinkComponent<$t>;
        $crate::bindings::downlink::export_downlink_world!(__TbgwDownlinkComponent with_types_in $crate::bindings::downlink);
    };
}

#[doc(hidden)]
pub struct UplinkComponent<T>(std::marker::PhantomData<T>);

#[doc(hidden)]
pub struct UplinkResource<T> {
    converter: T,
    keys: std::cell::RefCell<keys::KeyTable>,
}

impl<T: Uplink> bindings::uplink::exports::tbgw::converter::uplink::Guest for UplinkComponent<T> {
    type Converter = UplinkResource<T>;
}

impl<T: Uplink> bindings::uplink::exports::tbgw::converter::uplink::GuestConverter for UplinkResource<T> {
    fn create(
        config: String,
    ) -> Result<bindings::uplink::exports::tbgw::converter::uplink::Converter, wit::ConfigError> {
        T::create(&config)
            .map(|converter| {
                let resource = UplinkResource { converter, keys: Default::default() };
                bindings::uplink::exports::tbgw::converter::uplink::Converter::new(resource)
            })
            .map_err(|e| wit::ConfigError { field: e.field, message: e.message })
    }

    fn convert(&self, batch: Vec<wit::RawUplink>) -> wit::UplinkResults {
        let mut keys = self.keys.borrow_mut();
        keys.begin();
        let results = batch
            .into_iter()
            .map(|message| {
                let message = convert::raw_uplink(message);
                match self.converter.convert(&message) {
                    Ok(output) => Ok(convert::uplink_output(output, &mut keys)),
                    Err(message) => Err(wit::ConvertError { message }),
                }
            })
            .collect();
        wit::UplinkResults { keys: keys.take_keys(), results }
    }
}

#[doc(hidden)]
pub struct DownlinkComponent<T>(std::marker::PhantomData<T>);

#[doc(hidden)]
pub struct DownlinkResource<T>(T);

impl<T: Downlink> bindings::downlink::exports::tbgw::converter::downlink::Guest for DownlinkComponent<T> {
    type Converter = DownlinkResource<T>;
}

impl<T: Downlink> bindings::downlink::exports::tbgw::converter::downlink::GuestConverter for DownlinkResource<T> {
    fn create(
        config: String,
    ) -> Result<bindings::downlink::exports::tbgw::converter::downlink::Converter, wit::ConfigError> {
        T::create(&config)
            .map(|c| bindings::downlink::exports::tbgw::converter::downlink::Converter::new(DownlinkResource(c)))
            .map_err(|e| wit::ConfigError { field: e.field, message: e.message })
    }

    fn convert(&self, batch: Vec<wit::DownlinkRequest>) -> Vec<Result<Vec<wit::DownlinkMessage>, wit::ConvertError>> {
        batch
            .into_iter()
            .map(|request| {
                let request = convert::downlink_request(request);
                self.0
                    .convert(&request)
                    .map(|messages| messages.into_iter().map(convert::downlink_message).collect())
                    .map_err(|message| wit::ConvertError { message })
            })
            .collect()
    }

    fn reply(&self, batch: Vec<wit::RpcAnswer>) -> Vec<Result<String, wit::ConvertError>> {
        batch
            .into_iter()
            .map(|answer| self.0.reply(&convert::rpc_answer(answer)).map_err(|message| wit::ConvertError { message }))
            .collect()
    }
}
