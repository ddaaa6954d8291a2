//! What one converter may use: time per call, memory per instance, size of
//! its results. Set per converter (the gateway reads them from a
//! converter's `limits` in the config); the defaults suit the built-ins with
//! room to spare, and interpreted converters (Python, JavaScript, tens of
//! µs a message) with room too.
//!
//! A call's deadline grows with its batch: a base (instance warm-up, a
//! garbage collection, a scheduling hiccup) plus a budget per message, so
//! that the batch size never decides whether a slow but correct converter
//! fails.

use std::time::Duration;

/// Per-converter limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long one message (or request) may take: a call of `n` gets
    /// `call_base + n × per_message`.
    pub per_message: Duration,
    /// What every call may take besides its messages.
    pub call_base: Duration,
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

impl Limits {
    /// The deadline of a call of `n` messages.
    pub fn deadline(&self, n: usize) -> Duration {
        self.call_base.saturating_add(self.per_message.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_message: Duration::from_millis(10),
            call_base: Duration::from_millis(100),
            create_timeout: Duration::from_secs(1),
            memory_bytes: 64 * 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_log_lines_per_call: 100,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_the_batch() {
        let l = Limits::default();
        assert_eq!(l.deadline(1), Duration::from_millis(110));
        assert_eq!(l.deadline(256), Duration::from_millis(100 + 2560));
        assert_eq!(Limits { per_message: Duration::MAX, ..l }.deadline(2), Duration::MAX);
    }
}
