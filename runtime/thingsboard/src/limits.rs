//! ThingsBoard's limits and how the client paces itself by them.
//!
//! ThingsBoard meters a gateway with token buckets (bucket4j, greedy refill):
//! one bandwidth per `capacity:seconds` pair of a limit, each starting full
//! and refilling continuously at `capacity / seconds`, kept by ThingsBoard
//! across reconnects. A consume takes from every bandwidth of a bucket or
//! from none. What exceeds a limit is dropped and the connection closed, so
//! the client must never exceed one: it keeps buckets of its own with the
//! same shape, at 80% of ThingsBoard's (as the Python gateway does: room for
//! what ThingsBoard counts that the gateway cannot see), and sends a publish
//! only when every bucket it costs from holds its cost.
//!
//! Two sets of limits apply ([`Scope`]): `gatewayRateLimits` to the child
//! devices, all together (`v1/gateway/*`), `rateLimits` to the gateway's own
//! session (`v1/devices/me/*`). Each has `messages`, `telemetryMessages` and
//! `telemetryDataPoints`. A telemetry or attributes publish costs one
//! telemetry message per device part plus its datapoints and no regular
//! message; anything else costs regular messages ([`Cost`]).
//!
//! The limits come from ThingsBoard (`getSessionLimits`, [`SessionLimits`]);
//! the gateway config can set them too, for a ThingsBoard that does not
//! answer. A refused publish (ThingsBoard closed the connection right after
//! it) means the buckets were wrong: [`Pacer::refused`] empties them and
//! halves the pace, which comes back, doubling each minute without refusal.
//! The pace scales both what a bucket holds and how fast it refills, so a
//! slowed client also sends smaller publishes: a publish larger than what
//! ThingsBoard's bucket really holds could never pass.

use std::time::{Duration, Instant};

/// The share of ThingsBoard's limits that tbgw uses.
const SHARE: f64 = 0.8;
/// How fast a pace slowed by a refusal comes back: doubling per this much.
const RECOVERY: Duration = Duration::from_secs(60);
/// The slowest pace a run of refusals leads to.
const SLOWEST: f64 = 1.0 / 64.0;

/// Which of ThingsBoard's limits a publish counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `gatewayRateLimits`: the child devices (`v1/gateway/*`).
    Gateway,
    /// `rateLimits`: the gateway's own session (`v1/devices/me/*`).
    Own,
}

impl Scope {
    /// The scope of a publish on `topic`.
    pub fn of(topic: &str) -> Scope {
        if topic.starts_with("v1/devices/me/") { Scope::Own } else { Scope::Gateway }
    }
}

/// What one publish costs, as ThingsBoard counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub scope: Scope,
    pub messages: u64,
    pub telemetry_messages: u64,
    pub datapoints: u64,
}

impl Cost {
    /// A telemetry or attributes publish of `parts` device parts.
    pub fn telemetry(scope: Scope, parts: usize, datapoints: usize) -> Cost {
        Cost { scope, messages: 0, telemetry_messages: parts as u64, datapoints: datapoints as u64 }
    }

    /// A publish that costs `n` regular messages.
    pub fn messages(scope: Scope, n: u64) -> Cost {
        Cost { scope, messages: n, telemetry_messages: 0, datapoints: 0 }
    }
}

/// Limits ThingsBoard announced for this session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionLimits {
    pub max_payload_bytes: Option<usize>,
    pub max_inflight: Option<usize>,
    /// `rateLimits`: the gateway's own session.
    pub own: RateLimits,
    /// `gatewayRateLimits`: its child devices, all together.
    pub gateway: RateLimits,
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
        let set = |section: &str| -> Result<RateLimits, String> {
            let rate = |key: &str| {
                obj.get(section)
                    .and_then(|r| r.get(key))
                    .and_then(serde_json::Value::as_str)
                    .map(|spec| RateLimit::parse(spec).map_err(|e| format!("{section}.{key}: {e}")))
                    .transpose()
                    .map(Option::unwrap_or_default)
            };
            Ok(RateLimits {
                messages: rate("messages")?,
                telemetry_messages: rate("telemetryMessages")?,
                telemetry_datapoints: rate("telemetryDataPoints")?,
            })
        };
        Ok(SessionLimits {
            max_payload_bytes: number("maxPayloadSize"),
            max_inflight: number("maxInflightMessages"),
            own: set("rateLimits")?,
            gateway: set("gatewayRateLimits")?,
        })
    }
}

/// The three limits of one scope.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimits {
    pub messages: RateLimit,
    pub telemetry_messages: RateLimit,
    pub telemetry_datapoints: RateLimit,
}

impl RateLimits {
    pub fn is_limited(&self) -> bool {
        self.messages.is_limited() || self.telemetry_messages.is_limited() || self.telemetry_datapoints.is_limited()
    }

    /// Take these limits' specs, keeping the buckets of every limit whose
    /// spec did not change (a reconnect announces the same limits again,
    /// and ThingsBoard's buckets did not refill meanwhile any more than ours).
    fn adopt(&mut self, new: &RateLimits) {
        for (mine, theirs) in [
            (&mut self.messages, &new.messages),
            (&mut self.telemetry_messages, &new.telemetry_messages),
            (&mut self.telemetry_datapoints, &new.telemetry_datapoints),
        ] {
            if mine.spec != theirs.spec {
                *mine = theirs.clone();
            }
        }
    }

    /// The most telemetry messages and datapoints one publish may cost: a
    /// larger one could never pass.
    pub fn largest_publish(&self) -> (Option<u64>, Option<u64>) {
        (self.telemetry_messages.smallest_capacity(), self.telemetry_datapoints.smallest_capacity())
    }
}

/// A limit of ThingsBoard's form `"capacity:seconds,..."`: a token bucket
/// with one bandwidth per pair, at [`SHARE`] of each capacity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimit {
    /// As written, to tell whether a newly announced limit changed.
    spec: String,
    bands: Vec<Band>,
}

#[derive(Debug, Clone, PartialEq)]
struct Band {
    capacity: f64,
    /// Tokens per second.
    refill: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Band {
    /// What the bandwidth holds at `pace`.
    fn capacity(&self, pace: f64) -> f64 {
        (self.capacity * pace).floor().max(1.0)
    }

    fn refill(&mut self, now: Instant, pace: f64) {
        if let Some(at) = self.at {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + secs * self.refill * pace).min(self.capacity(pace));
        }
        self.at = Some(now);
    }
}

impl RateLimit {
    /// Parse `"10:1,300:60"` (`;` separates too); `""` and `"0:0"` mean none.
    pub fn parse(spec: &str) -> Result<RateLimit, String> {
        let mut bands = Vec::new();
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
            let capacity = (cap as f64 * SHARE).floor().max(1.0);
            bands.push(Band { capacity, refill: capacity / secs as f64, tokens: capacity, at: None });
        }
        Ok(RateLimit { spec: spec.trim().to_owned(), bands })
    }

    pub fn is_limited(&self) -> bool {
        !self.bands.is_empty()
    }

    /// The smallest capacity of its bandwidths (after the share).
    pub fn smallest_capacity(&self) -> Option<u64> {
        self.smallest_at(1.0)
    }

    fn smallest_at(&self, pace: f64) -> Option<u64> {
        self.bands.iter().map(|b| b.capacity(pace) as u64).min()
    }

    /// How long before `amount` may pass at `pace` (1.0: full speed);
    /// `None`: now. An amount larger than a bandwidth's capacity passes
    /// when that bandwidth is full, so that it cannot wait forever.
    fn wait(&mut self, amount: u64, now: Instant, pace: f64) -> Option<Duration> {
        if amount == 0 {
            return None;
        }
        let mut wait = 0f64;
        for b in &mut self.bands {
            b.refill(now, pace);
            let need = (amount as f64).min(b.capacity(pace));
            if b.tokens < need {
                wait = wait.max((need - b.tokens) / (b.refill * pace));
            }
        }
        (wait > 0.0).then(|| Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
    }

    /// Take `amount` (after [`RateLimit::wait`] said it may pass).
    fn take(&mut self, amount: u64) {
        for b in &mut self.bands {
            b.tokens -= amount as f64;
        }
    }

    fn empty(&mut self, now: Instant) {
        for b in &mut self.bands {
            b.tokens = 0.0;
            b.at = Some(now);
        }
    }

    /// Tokens left in the emptiest bandwidth, as a share of what it holds
    /// at `pace`.
    fn fill(&self, pace: f64) -> Option<f64> {
        self.bands.iter().map(|b| b.tokens / b.capacity(pace)).reduce(f64::min)
    }
}

/// Where the limits in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitsSource {
    /// None known: the client sends as fast as the connection takes.
    #[default]
    None,
    /// The gateway config (`thingsboard.rateLimits` and the like).
    Config,
    /// ThingsBoard's `getSessionLimits` answer.
    ThingsBoard,
}

/// The client's buckets, kept across sessions as ThingsBoard keeps its own.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    gateway: RateLimits,
    own: RateLimits,
    source: LimitsSource,
    /// Below 1 after a refusal; recovers over time.
    slowed: Option<(f64, Instant)>,
    refusals: u64,
}

/// What the pacer shows in the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PacerStatus {
    pub source: LimitsSource,
    /// The share of the limits the client sends at now (1.0 unless slowed
    /// down by a refusal).
    pub pace: f64,
    /// Publishes ThingsBoard refused since the start.
    pub refusals: u64,
    /// How empty the emptiest of the child devices' buckets is (of what it
    /// holds at the pace): 0 idle, 1 a drain using every token.
    pub gateway_use: Option<f64>,
}

impl Pacer {
    /// A pacer with the limits of the gateway config.
    pub fn configured(gateway: RateLimits, own: RateLimits) -> Pacer {
        let source = if gateway.is_limited() || own.is_limited() { LimitsSource::Config } else { LimitsSource::None };
        Pacer { gateway, own, source, ..Pacer::default() }
    }

    /// Apply ThingsBoard's announced limits (they take precedence over the
    /// config's: they are what ThingsBoard enforces). An empty set leaves
    /// the configured one in force.
    pub fn adopt(&mut self, limits: &SessionLimits) {
        if limits.gateway.is_limited() {
            self.gateway.adopt(&limits.gateway);
        }
        if limits.own.is_limited() {
            self.own.adopt(&limits.own);
        }
        if limits.gateway.is_limited() || limits.own.is_limited() {
            self.source = LimitsSource::ThingsBoard;
        }
    }

    pub fn source(&self) -> LimitsSource {
        self.source
    }

    /// The most telemetry messages (device parts) and datapoints one publish
    /// of `scope` may cost now (smaller while slowed down).
    pub fn largest_publish(&mut self, scope: Scope, now: Instant) -> (Option<u64>, Option<u64>) {
        let pace = self.pace(now);
        let l = match scope {
            Scope::Gateway => &self.gateway,
            Scope::Own => &self.own,
        };
        (l.telemetry_messages.smallest_at(pace), l.telemetry_datapoints.smallest_at(pace))
    }

    fn pace(&mut self, now: Instant) -> f64 {
        let Some((slowest, since)) = self.slowed else { return 1.0 };
        let recovered =
            slowest * 2f64.powf(now.saturating_duration_since(since).as_secs_f64() / RECOVERY.as_secs_f64());
        if recovered >= 1.0 {
            self.slowed = None;
            return 1.0;
        }
        recovered
    }

    /// How long before a publish of `cost` may go; `None`: now.
    pub fn wait(&mut self, cost: &Cost, now: Instant) -> Option<Duration> {
        let pace = self.pace(now);
        let l = match cost.scope {
            Scope::Gateway => &mut self.gateway,
            Scope::Own => &mut self.own,
        };
        [
            l.messages.wait(cost.messages, now, pace),
            l.telemetry_messages.wait(cost.telemetry_messages, now, pace),
            l.telemetry_datapoints.wait(cost.datapoints, now, pace),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Count a publish of `cost` that is going now.
    pub fn take(&mut self, cost: &Cost) {
        let l = match cost.scope {
            Scope::Gateway => &mut self.gateway,
            Scope::Own => &mut self.own,
        };
        l.messages.take(cost.messages);
        l.telemetry_messages.take(cost.telemetry_messages);
        l.telemetry_datapoints.take(cost.datapoints);
    }

    /// ThingsBoard refused a publish: its buckets are emptier than ours.
    /// Empty ours and halve the pace. Returns the new pace. (Without any
    /// limits known there is nothing to slow down by: only counted.)
    pub fn refused(&mut self, now: Instant) -> f64 {
        self.refusals += 1;
        if self.source == LimitsSource::None {
            return 1.0;
        }
        let pace = (self.pace(now) / 2.0).max(SLOWEST);
        self.slowed = Some((pace, now));
        for l in [&mut self.gateway, &mut self.own] {
            for r in [&mut l.messages, &mut l.telemetry_messages, &mut l.telemetry_datapoints] {
                r.empty(now);
            }
        }
        pace
    }

    pub fn status(&mut self, now: Instant) -> PacerStatus {
        let pace = self.pace(now);
        let g = &mut self.gateway;
        for r in [&mut g.messages, &mut g.telemetry_messages, &mut g.telemetry_datapoints] {
            for b in &mut r.bands {
                b.refill(now, pace);
            }
        }
        let gateway_use = [&g.messages, &g.telemetry_messages, &g.telemetry_datapoints]
            .into_iter()
            .filter_map(|r| r.fill(pace))
            .reduce(f64::min)
            .map(|fill| (1.0 - fill).clamp(0.0, 1.0));
        PacerStatus { source: self.source, pace, refusals: self.refusals, gateway_use }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_scopes_at_eighty_percent() {
        let l = SessionLimits::parse(
            br#"{"maxPayloadSize":65536,"maxInflightMessages":100,
                 "rateLimits":{"messages":"10:1,300:60","telemetryMessages":"","telemetryDataPoints":"0:0"},
                 "gatewayRateLimits":{"messages":"","telemetryMessages":"100:1","telemetryDataPoints":"2000:1,60000:60"}}"#,
        )
        .unwrap();
        assert_eq!(l.max_payload_bytes, Some(52428));
        assert_eq!(l.max_inflight, Some(80));
        assert!(l.own.messages.is_limited());
        assert!(!l.own.telemetry_messages.is_limited() && !l.own.telemetry_datapoints.is_limited());
        assert!(!l.gateway.messages.is_limited());
        assert_eq!(l.gateway.largest_publish(), (Some(80), Some(1600)));
        assert!(SessionLimits::parse(br#"{"error":"timeout"}"#).is_err());
        let e = SessionLimits::parse(br#"{"gatewayRateLimits":{"messages":"ten:1"}}"#).unwrap_err();
        assert!(e.contains("gatewayRateLimits.messages") && e.contains("ten:1"), "{e}");
    }

    #[test]
    fn buckets_start_full_and_refill_continuously() {
        let mut p = Pacer::configured(
            RateLimits { telemetry_datapoints: RateLimit::parse("100:1").unwrap(), ..RateLimits::default() },
            RateLimits::default(),
        );
        let t0 = Instant::now();
        let cost = Cost::telemetry(Scope::Gateway, 1, 20);
        // 80 tokens: four publishes of 20 at once.
        for _ in 0..4 {
            assert_eq!(p.wait(&cost, t0), None);
            p.take(&cost);
        }
        let wait = p.wait(&cost, t0).expect("the fifth must wait");
        // 20 tokens at 80 per second: 250 ms, not the rest of a window.
        assert!((240..=260).contains(&wait.as_millis()), "{wait:?}");
        assert_eq!(p.wait(&cost, t0 + Duration::from_millis(250)), None);
        // Our own session's limits are not the devices'.
        assert_eq!(p.wait(&Cost::telemetry(Scope::Own, 1, 1000), t0), None);
    }

    #[test]
    fn every_window_counts_and_none_over_capacity_waits_forever() {
        let mut p = Pacer::configured(
            RateLimits { messages: RateLimit::parse("10:1,50:60").unwrap(), ..RateLimits::default() },
            RateLimits::default(),
        );
        let t0 = Instant::now();
        let one = Cost::messages(Scope::Gateway, 1);
        let mut sent = 0;
        let mut t = t0;
        // 8/s and 40 a minute: after the first 40, one every 1.5 s.
        while t < t0 + Duration::from_secs(10) {
            match p.wait(&one, t) {
                None => {
                    p.take(&one);
                    sent += 1;
                }
                Some(w) => t += w,
            }
        }
        assert!((45..=48).contains(&sent), "{sent} in 10 s");
        let mut big = Pacer::configured(
            RateLimits { messages: RateLimit::parse("10:1").unwrap(), ..RateLimits::default() },
            RateLimits::default(),
        );
        assert_eq!(big.wait(&Cost::messages(Scope::Gateway, 50), t0), None, "a full bucket lets any cost pass");
    }

    #[test]
    fn a_refusal_empties_the_buckets_and_halves_the_pace_for_a_while() {
        let spec = || RateLimits { telemetry_messages: RateLimit::parse("100:1").unwrap(), ..RateLimits::default() };
        let mut p = Pacer::configured(spec(), RateLimits::default());
        let t0 = Instant::now();
        let cost = Cost::telemetry(Scope::Gateway, 8, 8);
        assert_eq!(p.wait(&cost, t0), None);
        assert_eq!(p.refused(t0), 0.5);
        // Empty, and refilling at 40 per second: 200 ms for 8.
        let w = p.wait(&cost, t0).expect("empty after a refusal");
        assert!((190..=210).contains(&w.as_millis()), "{w:?}");
        // And publishes half as large.
        assert_eq!(p.largest_publish(Scope::Gateway, t0), (Some(40), None));
        assert_eq!(p.status(t0).refusals, 1);
        assert!(p.status(t0 + RECOVERY * 2).pace == 1.0, "recovered");
        // The same limits announced again keep the buckets' state.
        let mut q = Pacer::configured(spec(), RateLimits::default());
        q.take(&Cost::telemetry(Scope::Gateway, 80, 0));
        q.adopt(&SessionLimits { gateway: spec(), ..SessionLimits::default() });
        assert!(q.wait(&cost, t0).is_some(), "still empty");
        assert_eq!(q.source(), LimitsSource::ThingsBoard);
    }
}
