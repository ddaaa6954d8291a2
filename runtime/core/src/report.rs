//! Report strategies: which converted values go on to ThingsBoard, as the
//! ThingsBoard IoT Gateway's `reportStrategy` decides it, so that a device
//! polled every second whose registers rarely change does not flood
//! ThingsBoard with the same values.
//!
//! A strategy is `{"type": T, "reportPeriod": ms}` with `T` one of
//! `ON_RECEIVED` (every value, the default), `ON_CHANGE` (a value that
//! differs from the last one sent for its device and key),
//! `ON_REPORT_PERIOD` (at most one value per key every `reportPeriod`) and
//! `ON_CHANGE_OR_REPORT_PERIOD` (a change, and at least every
//! `reportPeriod` while values keep coming); `DISABLED` is `ON_RECEIVED`.
//! It can be set for the whole gateway (`thingsboard.reportStrategy`), a
//! connector (the `reportStrategy` at the root of its file), a device or
//! mapping, and a key; the most specific one applies ([`ReportPolicy`]).
//!
//! The periods are checked as values arrive, not by a timer: a key whose
//! values stop coming is not repeated (the Python gateway sends the last
//! value again on its own clock). [`ReportFilter`] keeps the last value
//! sent per device and key, as a 64-bit hash.

use crate::Value;
use crate::config::{Diagnostics, Obj};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// How often a key's values are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    OnReceived,
    OnChange,
    /// At most one value per period, in ms.
    OnReportPeriod(u64),
    /// On a change, and at least once per period (ms) while values come.
    OnChangeOrReportPeriod(u64),
}

/// The Python gateway's default `reportPeriod`, ms.
const DEFAULT_PERIOD_MS: u64 = 10_000;

/// Read a `reportStrategy` object at `path`; problems go to `d`.
pub fn parse(d: &mut Diagnostics, path: &str, value: &serde_json::Value) -> Option<Strategy> {
    let mut o = Obj::new(d, path, value)?;
    let kind = o.required_string(d, "type").map(str::to_ascii_uppercase);
    let period = o.uint(d, "reportPeriod", 1..=86_400_000);
    o.unused(
        d,
        &[
            ("aggregationFunction", "not implemented: values are reported as they are, not aggregated"),
            ("ttl", "tbgw keeps the last value of each key as long as it runs"),
        ],
    );
    o.finish(d);
    let period = period.unwrap_or(DEFAULT_PERIOD_MS);
    match kind?.as_str() {
        "ON_RECEIVED" | "DISABLED" => Some(Strategy::OnReceived),
        "ON_CHANGE" => Some(Strategy::OnChange),
        "ON_REPORT_PERIOD" => Some(Strategy::OnReportPeriod(period)),
        "ON_CHANGE_OR_REPORT_PERIOD" => Some(Strategy::OnChangeOrReportPeriod(period)),
        other => {
            d.error(
                format!("{path}.type"),
                format!(
                    "unknown report strategy `{other}`; expected ON_RECEIVED, ON_CHANGE, ON_REPORT_PERIOD, \
                     ON_CHANGE_OR_REPORT_PERIOD or DISABLED"
                ),
            );
            None
        }
    }
}

/// The strategies of one route's values, most specific first: a device's
/// key, any device's key, the device, the route. `None` where the level
/// above decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportPolicy {
    pub route: Option<Strategy>,
    pub devices: HashMap<String, Strategy>,
    pub keys: HashMap<String, Strategy>,
    /// Device, then key.
    pub device_keys: HashMap<String, HashMap<String, Strategy>>,
}

impl ReportPolicy {
    /// The strategy of `key` of `device`; `outer` where nothing here says.
    pub fn strategy(&self, outer: Strategy, device: &str, key: &str) -> Strategy {
        if let Some(s) = self.device_keys.get(device).and_then(|keys| keys.get(key)) {
            return *s;
        }
        if let Some(s) = self.keys.get(key) {
            return *s;
        }
        if let Some(s) = self.devices.get(device) {
            return *s;
        }
        self.route.unwrap_or(outer)
    }

    /// Whether every value is reported whatever it is (nothing to filter).
    pub fn reports_everything(&self, outer: Strategy) -> bool {
        let all = |s: &Strategy| *s == Strategy::OnReceived;
        all(&self.route.unwrap_or(outer))
            && self.devices.values().all(all)
            && self.keys.values().all(all)
            && self.device_keys.values().flat_map(HashMap::values).all(all)
    }
}

/// What was last sent of each (device, key, telemetry or attribute).
/// Looked up by `&str` on the hot path: names are copied only for a new key.
#[derive(Debug, Default)]
pub struct ReportFilter {
    devices: HashMap<String, Keys>,
    keys: usize,
}

#[derive(Debug, Default)]
struct Keys {
    telemetry: HashMap<String, Last>,
    attributes: HashMap<String, Last>,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    hash: u64,
    sent_ms: i64,
}

/// Keys remembered at most; past it the memory starts over (every key's
/// next value is reported), so a source inventing keys cannot grow it
/// without bound.
const MAX_KEYS: usize = 2_000_000;

/// A period this close to its end counts as over: polls a period apart
/// arrive a little early or late.
const SLACK_MS: i64 = 10;

impl ReportFilter {
    /// Whether `value` of `key` of `device`, received at `now_ms`, is
    /// reported under `strategy` (and if so, remember it as sent).
    pub fn keep(
        &mut self,
        strategy: Strategy,
        device: &str,
        key: &str,
        telemetry: bool,
        value: &Value,
        now_ms: i64,
    ) -> bool {
        if strategy == Strategy::OnReceived {
            return true;
        }
        let hash = hash(value);
        let now = Last { hash, sent_ms: now_ms };
        if let Some(keys) = self.devices.get_mut(device) {
            let map = if telemetry { &mut keys.telemetry } else { &mut keys.attributes };
            if let Some(last) = map.get_mut(key) {
                let keep = match strategy {
                    Strategy::OnReceived => true,
                    Strategy::OnChange => last.hash != hash,
                    Strategy::OnReportPeriod(p) => now_ms - last.sent_ms >= p as i64 - SLACK_MS,
                    Strategy::OnChangeOrReportPeriod(p) => {
                        last.hash != hash || now_ms - last.sent_ms >= p as i64 - SLACK_MS
                    }
                };
                if keep {
                    *last = now;
                }
                return keep;
            }
        }
        // A key not seen yet: reported, and remembered.
        if self.keys >= MAX_KEYS {
            self.devices.clear();
            self.keys = 0;
        }
        let keys = self.devices.entry(device.to_owned()).or_default();
        let map = if telemetry { &mut keys.telemetry } else { &mut keys.attributes };
        map.insert(key.to_owned(), now);
        self.keys += 1;
        true
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }
}

fn hash(value: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match value {
        Value::Bool(b) => (0u8, b).hash(&mut h),
        Value::Int(i) => (1u8, i).hash(&mut h),
        Value::Float(x) => (2u8, x.to_bits()).hash(&mut h),
        Value::Text(s) => (3u8, s).hash(&mut h),
        Value::Json(s) => (4u8, s).hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(json: &str) -> (Option<Strategy>, Diagnostics) {
        let mut d = Diagnostics::default();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        (parse(&mut d, "reportStrategy", &v), d)
    }

    #[test]
    fn strategies_read_as_the_python_gateway_writes_them() {
        assert_eq!(strategy(r#"{"type": "ON_CHANGE"}"#).0, Some(Strategy::OnChange));
        assert_eq!(strategy(r#"{"type": "on_received"}"#).0, Some(Strategy::OnReceived));
        assert_eq!(strategy(r#"{"type": "DISABLED"}"#).0, Some(Strategy::OnReceived));
        assert_eq!(
            strategy(r#"{"type": "ON_REPORT_PERIOD", "reportPeriod": 5000}"#).0,
            Some(Strategy::OnReportPeriod(5000))
        );
        assert_eq!(
            strategy(r#"{"type": "ON_CHANGE_OR_REPORT_PERIOD"}"#).0,
            Some(Strategy::OnChangeOrReportPeriod(10_000))
        );
        let (s, d) = strategy(r#"{"type": "ON_CHANGE", "aggregationFunction": "AVERAGE", "ttl": 60}"#);
        assert_eq!((s, d.errors.len(), d.notices.len()), (Some(Strategy::OnChange), 0, 2));
        let (s, d) = strategy(r#"{"type": "SOMETIMES"}"#);
        assert_eq!(s, None);
        assert!(d.errors[0].to_string().starts_with("reportStrategy.type: unknown report strategy `SOMETIMES`"));
        let (_, d) = strategy(r#"{"reportPeriod": 0}"#);
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        assert!(errors.contains(&"reportStrategy.type: required".to_owned()), "{errors:?}");
    }

    #[test]
    fn the_most_specific_level_decides() {
        let mut p = ReportPolicy { route: Some(Strategy::OnChange), ..Default::default() };
        p.devices.insert("A".into(), Strategy::OnReportPeriod(1000));
        p.keys.insert("t".into(), Strategy::OnReceived);
        p.device_keys.entry("A".into()).or_default().insert("t".into(), Strategy::OnChangeOrReportPeriod(500));
        assert_eq!(p.strategy(Strategy::OnReceived, "A", "t"), Strategy::OnChangeOrReportPeriod(500));
        assert_eq!(p.strategy(Strategy::OnReceived, "B", "t"), Strategy::OnReceived);
        assert_eq!(p.strategy(Strategy::OnReceived, "A", "h"), Strategy::OnReportPeriod(1000));
        assert_eq!(p.strategy(Strategy::OnReceived, "B", "h"), Strategy::OnChange);
        assert_eq!(ReportPolicy::default().strategy(Strategy::OnChange, "B", "h"), Strategy::OnChange);
        assert!(ReportPolicy::default().reports_everything(Strategy::OnReceived));
        assert!(!p.reports_everything(Strategy::OnReceived));
    }

    #[test]
    fn values_are_kept_as_each_strategy_says() {
        let mut f = ReportFilter::default();
        let on_change = Strategy::OnChange;
        let seq = [(0, 1), (1000, 1), (2000, 2), (3000, 2), (4000, 1)];
        let kept: Vec<bool> = seq.iter().map(|(t, v)| f.keep(on_change, "A", "k", true, &Value::Int(*v), *t)).collect();
        assert_eq!(kept, [true, false, true, false, true]);
        // Telemetry and attributes of the same name, and devices, are apart.
        assert!(f.keep(on_change, "A", "k", false, &Value::Int(1), 0));
        assert!(f.keep(on_change, "B", "k", true, &Value::Int(1), 0));
        let period = Strategy::OnReportPeriod(3000);
        let kept: Vec<bool> =
            (0..7).map(|i| f.keep(period, "A", "p", true, &Value::Float(f64::from(i)), i64::from(i) * 1000)).collect();
        assert_eq!(kept, [true, false, false, true, false, false, true]);
        let either = Strategy::OnChangeOrReportPeriod(3000);
        let values = [5, 5, 6, 6, 6, 6, 6];
        let kept: Vec<bool> = values
            .iter()
            .enumerate()
            .map(|(i, v)| f.keep(either, "A", "e", true, &Value::Int(*v), i as i64 * 1000))
            .collect();
        assert_eq!(kept, [true, false, true, false, false, true, false]);
        // A poll a few ms early still ends its period.
        assert!(f.keep(period, "A", "q", true, &Value::Int(0), 0));
        assert!(f.keep(period, "A", "q", true, &Value::Int(0), 2995));
        assert!(f.keep(Strategy::OnReceived, "A", "r", true, &Value::Int(0), 0));
        assert!(f.keep(Strategy::OnReceived, "A", "r", true, &Value::Int(0), 0));
    }
}
