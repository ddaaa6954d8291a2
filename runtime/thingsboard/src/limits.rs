//! ThingsBoard's session limits (the `getSessionLimits` client RPC) and the
//! rate limits they carry.
//!
//! The answer looks like
//! `{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":"200:1,6000:60","telemetryMessages":"100:1","telemetryDataPoints":"2000:1"}}`.
//! As the Python gateway does, tbgw uses 80% of each limit, leaving room for
//! what ThingsBoard counts that the gateway does not see.

use std::time::{Duration, Instant};

/// The share of ThingsBoard's limits that tbgw uses.
const SHARE: f64 = 0.8;

/// Limits ThingsBoard announced for this session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionLimits {
    pub max_payload_bytes: Option<usize>,
    pub max_inflight: Option<usize>,
    pub messages: RateLimit,
    pub telemetry_messages: RateLimit,
    pub telemetry_datapoints: RateLimit,
}

impl SessionLimits {
    /// Parse the answer to `getSessionLimits`.
    pub fn parse(payload: &[u8]) -> Result<SessionLimits, String> {
        let doc: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
        let obj = doc.as_object().ok_or("not a JSON object")?;
        if let Some(err) = obj.get("error") {
            return Err(format!("ThingsBoard answered with an error: {err}"));
        }
        let share = |n: u64| ((n as f64 * SHARE) as usize).max(1);
        let number = |key: &str| obj.get(key).and_then(serde_json::Value::as_u64).filter(|n| *n > 0).map(share);
        let rate = |key: &str| {
            obj.get("rateLimits")
                .and_then(|r| r.get(key))
                .and_then(serde_json::Value::as_str)
                .map(RateLimit::parse)
                .transpose()
                .map(Option::unwrap_or_default)
        };
        Ok(SessionLimits {
            max_payload_bytes: number("maxPayloadSize"),
            max_inflight: number("maxInflightMessages"),
            messages: rate("messages")?,
            telemetry_messages: rate("telemetryMessages")?,
            telemetry_datapoints: rate("telemetryDataPoints")?,
        })
    }
}

/// A rate limit of ThingsBoard's form `"capacity:seconds,..."`: at most
/// `capacity` per window of `seconds`, for every pair. Counted in fixed
/// windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimit {
    windows: Vec<Window>,
}

#[derive(Debug, Clone, PartialEq)]
struct Window {
    capacity: u64,
    period: Duration,
    used: u64,
    started: Option<Instant>,
}

impl RateLimit {
    /// Parse `"10:1,300:60"` (`;` separates too); `""` and `"0:0"` mean none.
    pub fn parse(spec: &str) -> Result<RateLimit, String> {
        let mut windows = Vec::new();
        for part in spec.split([',', ';']).map(str::trim).filter(|p| !p.is_empty()) {
            let (cap, secs) =
                part.split_once(':').ok_or_else(|| format!("rate limit `{part}` is not CAPACITY:SECONDS"))?;
            let (cap, secs): (u64, u64) = match (cap.trim().parse(), secs.trim().parse()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return Err(format!("rate limit `{part}` is not CAPACITY:SECONDS")),
            };
            if cap == 0 || secs == 0 {
                continue;
            }
            windows.push(Window {
                capacity: ((cap as f64 * SHARE) as u64).max(1),
                period: Duration::from_secs(secs),
                used: 0,
                started: None,
            });
        }
        Ok(RateLimit { windows })
    }

    pub fn is_limited(&self) -> bool {
        !self.windows.is_empty()
    }

    /// How long before `amount` may pass (`None`: now). An amount larger
    /// than a window's capacity passes when that window is fresh, so it
    /// cannot wait forever.
    pub fn wait(&mut self, amount: u64, now: Instant) -> Option<Duration> {
        let mut wait = Duration::ZERO;
        for w in &mut self.windows {
            match w.started {
                Some(s) if now.duration_since(s) < w.period => {}
                _ => {
                    w.started = Some(now);
                    w.used = 0;
                }
            }
            if w.used > 0 && w.used + amount > w.capacity {
                let left = w.period.saturating_sub(now.duration_since(w.started.unwrap_or(now)));
                wait = wait.max(left.max(Duration::from_millis(1)));
            }
        }
        (wait > Duration::ZERO).then_some(wait)
    }

    /// Count `amount` (after [`RateLimit::wait`] said it may pass).
    pub fn take(&mut self, amount: u64) {
        for w in &mut self.windows {
            w.used += amount;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_at_eighty_percent() {
        let l = SessionLimits::parse(
            br#"{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{"messages":"10:1,300:60","telemetryMessages":"","telemetryDataPoints":"0:0"}}"#,
        )
        .unwrap();
        assert_eq!(l.max_payload_bytes, Some(52428));
        assert_eq!(l.max_inflight, Some(80));
        assert!(l.messages.is_limited());
        assert!(!l.telemetry_messages.is_limited() && !l.telemetry_datapoints.is_limited());
        assert!(SessionLimits::parse(br#"{"error":"timeout"}"#).is_err());
        assert!(RateLimit::parse("ten:1").is_err());
    }

    #[test]
    fn windows_hold_and_release() {
        let mut r = RateLimit::parse("10:1").unwrap(); // 8 per second after the share
        let t0 = Instant::now();
        for _ in 0..8 {
            assert_eq!(r.wait(1, t0), None);
            r.take(1);
        }
        let wait = r.wait(1, t0).expect("the 9th must wait");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900));
        assert_eq!(r.wait(1, t0 + Duration::from_secs(1)), None, "a new window");
        let mut big = RateLimit::parse("10:1").unwrap();
        assert_eq!(big.wait(50, t0), None, "an oversized amount passes in a fresh window");
    }
}
