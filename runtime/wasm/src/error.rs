//! The runtime's errors. Each one names the converter it concerns, so that a
//! log line or an RPC reply tells the user where to look.

use std::sync::Arc;
use tbgw_core::Direction;

/// The engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot use the component cache directory {path}: {source}")]
    CacheDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the deadline ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
}

/// A converter could not be loaded, or a replacement was refused (the old
/// version keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("converter `{converter}`: cannot read {path}: {source}")]
    Read {
        converter: Arc<str>,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("converter `{converter}`: {origin} is not a valid WebAssembly component: {reason}")]
    Compile { converter: Arc<str>, origin: String, reason: String },
    #[error("converter `{converter}`: {origin} does not implement the {expected} world: {found}")]
    WrongWorld { converter: Arc<str>, origin: String, expected: &'static str, found: String },
    #[error("converter `{converter}`: cannot instantiate {origin}: {reason}")]
    Instantiate { converter: Arc<str>, origin: String, reason: String },
    #[error("converter `{converter}`: invalid config{}: {message}", field.as_deref().map(|f| format!(" at `{f}`")).unwrap_or_default())]
    Config { converter: Arc<str>, field: Option<String>, message: String },
    #[error("converter `{converter}`: create() failed: {source}")]
    Create {
        converter: Arc<str>,
        #[source]
        source: CallError,
    },
    #[error("converter `{converter}`: invalid limits: {reason}")]
    Limits { converter: Arc<str>, reason: String },
    #[error("converter `{converter}`: is an {actual} converter, cannot be replaced by an {wanted} one")]
    Direction { converter: Arc<str>, actual: Direction, wanted: Direction },
}

impl LoadError {
    /// The converter this error is about.
    pub fn converter(&self) -> &str {
        match self {
            LoadError::Read { converter, .. }
            | LoadError::Compile { converter, .. }
            | LoadError::WrongWorld { converter, .. }
            | LoadError::Instantiate { converter, .. }
            | LoadError::Config { converter, .. }
            | LoadError::Create { converter, .. }
            | LoadError::Limits { converter, .. }
            | LoadError::Direction { converter, .. } => converter,
        }
    }
}

/// A call failed as a whole: the instance that made it is discarded and the
/// next call gets a fresh one.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("converter `{converter}` timed out after {limit_ms} ms")]
    Timeout { converter: Arc<str>, limit_ms: u64 },
    #[error("converter `{converter}` ran out of memory (limit {} MiB)", limit_bytes / (1024 * 1024))]
    OutOfMemory { converter: Arc<str>, limit_bytes: u64 },
    #[error("converter `{converter}` trapped: {trap}{}", stderr.as_deref().map(|s| format!(" (guest stderr: {s})")).unwrap_or_default())]
    Trap { converter: Arc<str>, trap: String, stderr: Option<String> },
    #[error("converter `{converter}` broke the contract: {reason}")]
    Contract { converter: Arc<str>, reason: String },
    #[error("converter `{converter}`: cannot create an instance: {reason}")]
    Instantiate { converter: Arc<str>, reason: String },
}

impl CallError {
    /// The converter this error is about.
    pub fn converter(&self) -> &str {
        match self {
            CallError::Timeout { converter, .. }
            | CallError::OutOfMemory { converter, .. }
            | CallError::Trap { converter, .. }
            | CallError::Contract { converter, .. }
            | CallError::Instantiate { converter, .. } => converter,
        }
    }
}

/// One message (or request) could not be converted; its neighbours were.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// The converter said why (its `convert-error`).
    #[error("converter `{converter}`: {message}")]
    Rejected { converter: Arc<str>, message: String },
    /// The converter's result for this message is over the size limit.
    #[error("converter `{converter}`: result of {bytes} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge { converter: Arc<str>, bytes: usize, limit: usize },
    /// The call carrying this message failed even with the message alone.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The call carrying this message failed ({cause}), and so did the next
    /// `timeouts` messages tried alone, each timing out: this one was not
    /// tried alone, so the failure is not known to be its own.
    #[error(
        "converter `{converter}`: not converted: its batch failed ({cause}) and {timeouts} messages tried alone \
         after it timed out in a row, so this one was not tried"
    )]
    NotTried { converter: Arc<str>, cause: CallError, timeouts: u32 },
}
