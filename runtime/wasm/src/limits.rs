//! What one converter may use: time per call, memory per instance, size of
//! its results. Set per converter; the defaults suit the built-ins with room
//! to spare.

use std::time::Duration;

/// Per-converter limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of one `convert` call (a whole batch).
    pub timeout: Duration,
    /// Deadline of `create(config)`, which may compile regexes or start an
    /// interpreter.
    pub create_timeout: Duration,
    /// Linear memory of one instance, all memories together.
    pub memory_bytes: u64,
    /// Size of the result for one message (the sum of its keys and texts,
    /// 8 bytes per number): a larger result fails that message.
    pub max_output_bytes: usize,
    /// Log lines (the `log` import, stdout and stderr) kept per call; the
    /// rest are counted in one summary line.
    pub max_log_lines_per_call: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(100),
            create_timeout: Duration::from_secs(1),
            memory_bytes: 64 * 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_log_lines_per_call: 100,
        }
    }
}
