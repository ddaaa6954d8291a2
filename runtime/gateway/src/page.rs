//! The status page (`GET /` on the HTTP listener): the [`Status`] snapshot
//! as one HTML page a person reads: ThingsBoard's connection and readiness,
//! the store's backlog, each connector (state, devices, counts, messages
//! per second)
//! and each converter (source, version, generation, errors, time).
//!
//! Rendered on the server, with no script: it refreshes itself every
//! [`REFRESH_SECONDS`] (`<meta http-equiv="refresh">`), works in any
//! browser and in a locked-down one, and costs one snapshot per view.
//! Rates are messages received between two views ([`Rates`]), so the first
//! view shows the average since the start. Every name is escaped: connector,
//! device and converter names come from configs and devices.

use crate::status::Status;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

/// How often the page reloads itself.
pub const REFRESH_SECONDS: u32 = 5;

/// Messages received per connector at the previous view, to make rates.
#[derive(Default)]
pub struct Rates {
    last: Option<(Instant, HashMap<String, u64>)>,
}

impl Rates {
    /// Each connector's messages per second since the previous call (since
    /// the start, the first time).
    fn update(&mut self, status: &Status) -> HashMap<String, f64> {
        let now = Instant::now();
        let counts: HashMap<String, u64> = status.connectors.iter().map(|c| (c.name.clone(), c.received)).collect();
        let rates = counts
            .iter()
            .map(|(name, &n)| {
                let (since, before) = match &self.last {
                    Some((at, last)) => (now.duration_since(*at).as_secs_f64(), last.get(name).copied().unwrap_or(0)),
                    None => (status.uptime.as_secs_f64(), 0),
                };
                let rate = if since > 0.0 { n.saturating_sub(before) as f64 / since } else { 0.0 };
                (name.clone(), rate)
            })
            .collect();
        self.last = Some((now, counts));
        rates
    }
}

/// `<`, `>`, `&` and quotes as HTML wants them in text and attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2633;background:#fff}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}th,td{padding:.25em .8em;border-bottom:1px solid #d5dbe3;text-align:right}\
th:first-child,td:first-child,td.text{text-align:left}th{background:#eef2f7}\
.ok{color:#176b2c;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#5b6675}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;margin:0}dt{color:#5b6675}dd{margin:0}";

/// The page for `status`; `ready_reasons` from the readiness check.
pub fn render(status: &Status, ready_reasons: &[String], rates: &mut Rates) -> String {
    let rates = rates.update(status);
    let mut h = String::with_capacity(8 * 1024);
    let state = |ok: bool, yes: &str, no: &str| {
        if ok { format!("<span class=\"ok\">{yes}</span>") } else { format!("<span class=\"bad\">{no}</span>") }
    };
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>tbgw status</title><style>{STYLE}</style></head><body>\
         <h1>tbgw {version}</h1><p class=\"muted\">up {up}; this page reloads every {REFRESH_SECONDS} s</p>",
        version = env!("CARGO_PKG_VERSION"),
        up = duration(status.uptime.as_secs()),
    );
    let c = &status.client;
    let ready = if ready_reasons.is_empty() {
        state(true, "ready", "")
    } else {
        format!("{}: {}", state(false, "", "not ready"), escape(&ready_reasons.join("; ")))
    };
    let _ = write!(
        h,
        "<dl><dt>Readiness</dt><dd id=\"ready\">{ready}</dd>\
         <dt>ThingsBoard</dt><dd id=\"thingsboard\">{tb}</dd>\
         <dt>Delivered</dt><dd id=\"delivered\">{delivered}</dd>\
         <dt>Delivery rate</dt><dd id=\"delivery-rate\">{rate:.1} events/s</dd>\
         <dt>Store backlog</dt><dd id=\"backlog\">{backlog}</dd>\
         <dt>Store bytes</dt><dd id=\"store-bytes\">{bytes}</dd>\
         <dt>Dead letters</dt><dd id=\"dead-letters\">{dead}</dd>\
         <dt>Requests</dt><dd id=\"requests\">{requests} ({request_errors} failed)</dd></dl>",
        tb = state(c.connected, "connected", "not connected"),
        delivered = c.delivered,
        rate = c.delivery_rate,
        backlog = status.store.records,
        bytes = status.store.bytes,
        dead = status.store.dead_letters,
        requests = status.requests,
        request_errors = status.request_errors,
    );
    h.push_str(
        "<h2>Connectors</h2><table id=\"connectors\"><tr><th>Name</th><th>Type</th><th>State</th>\
         <th>Devices</th><th>Received</th><th>Messages/s</th><th>Converted</th><th>Errors</th><th>Stored</th>\
         <th>Delivered</th><th>To devices</th></tr>",
    );
    for k in &status.connectors {
        let st = if !k.running {
            "<span class=\"muted\">stopped</span>".to_owned()
        } else {
            state(k.connected, "connected", "not connected")
        };
        let _ = write!(
            h,
            "<tr data-connector=\"{name}\"><td>{name}</td><td class=\"text\">{kind}</td><td class=\"text\">{st}</td>\
             <td class=\"devices\">{devices}</td><td class=\"received\">{received}</td><td class=\"rate\">{rate:.1}</td><td class=\"converted\">{converted}</td>\
             <td class=\"errors\">{errors}</td><td class=\"stored\">{stored}</td><td class=\"delivered\">{delivered}</td>\
             <td class=\"sent\">{sent}</td></tr>",
            name = escape(&k.name),
            kind = escape(&k.kind),
            devices = k.devices,
            received = k.received,
            rate = rates.get(&k.name).copied().unwrap_or(0.0),
            converted = k.converted,
            errors = k.conversion_errors + k.downlink_errors + k.read_errors,
            stored = k.stored,
            delivered = k.delivered,
            sent = k.sent_to_devices,
        );
    }
    h.push_str(
        "</table><h2>Converters</h2><table id=\"converters\"><tr><th>Name</th><th>Direction</th><th>Source</th>\
         <th>SHA-256</th><th>Contract</th><th>Generation</th><th>Messages</th><th>Failed</th><th>µs/message</th></tr>",
    );
    for v in &status.converters {
        let i = &v.info;
        let _ = write!(
            h,
            "<tr data-converter=\"{name}\"><td>{name}</td><td class=\"text\">{direction}</td><td class=\"text\">{origin}</td>\
             <td class=\"text\" title=\"{sha}\">{short}</td><td class=\"text\">{contract}</td>\
             <td class=\"generation\">{generation}</td><td class=\"messages\">{messages}</td>\
             <td class=\"failed\">{failed}</td><td>{micros}</td></tr>",
            name = escape(&i.name),
            direction = i.direction,
            origin = escape(&i.origin),
            sha = escape(&i.sha256),
            short = escape(i.sha256.get(..12).unwrap_or(&i.sha256)),
            contract = escape(&i.contract_version),
            generation = i.generation,
            messages = i.messages,
            failed = i.message_errors,
            micros = i.busy_micros.checked_div(i.messages).unwrap_or(0),
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_durations_read_well() {
        assert_eq!(escape(r#"<b a="1">&'"#), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(61), "1 min 1 s");
        assert_eq!(duration(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(duration(2 * 86_400 + 3600), "2 d 1 h");
    }
}
