//! The demo's stand-in for ThingsBoard: subscribes to the gateway API topics
//! on the embedded broker and tallies what a ThingsBoard server would get:
//! connected devices, readings per device with the latest values, attribute
//! updates, and the gateway's own statistics. Like ThingsBoard, it answers
//! the gateway's `getSessionLimits` (with no limits), which the gateway
//! waits for before its first delivery.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one device sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceSeen {
    /// From `v1/gateway/connect`.
    pub device_type: Option<String>,
    pub connected: bool,
    pub readings: u64,
    /// The latest reading: (ts, values).
    pub last: Option<(i64, serde_json::Map<String, Value>)>,
    pub attributes: serde_json::Map<String, Value>,
}

/// Everything received so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub devices: BTreeMap<String, DeviceSeen>,
    /// Telemetry readings (one per timestamp per device).
    pub readings: u64,
    pub attribute_updates: u64,
    /// The gateway's latest statistics (`v1/devices/me/telemetry`).
    pub stats: Option<serde_json::Map<String, Value>>,
    /// Publishes that were not what the gateway API prescribes.
    pub malformed: u64,
}

pub struct View {
    seen: Arc<Mutex<Seen>>,
}

const TOPICS: [&str; 5] = [
    "v1/gateway/connect",
    "v1/gateway/telemetry",
    "v1/gateway/attributes",
    "v1/devices/me/telemetry",
    "v1/devices/me/rpc/request/+",
];
const RPC_REQUEST: &str = "v1/devices/me/rpc/request/";
const NO_LIMITS: &str = r#"{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{},"gatewayRateLimits":{}}"#;

impl View {
    /// Subscribe on the broker at `port`; returns once subscribed (or after
    /// a few seconds if the broker does not answer).
    pub async fn start(port: u16) -> View {
        let mut opts = MqttOptions::new("tbgw-demo-thingsboard", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(16 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let sink = seen.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in TOPICS {
                            let _ = client.subscribe(t, QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => match p.topic.strip_prefix(RPC_REQUEST) {
                        Some(id) if String::from_utf8_lossy(&p.payload).contains("getSessionLimits") => {
                            let topic = format!("v1/devices/me/rpc/response/{id}");
                            let _ = client.try_publish(topic, QoS::AtMostOnce, false, NO_LIMITS);
                        }
                        Some(_) => {}
                        None => record(&mut sink.lock().unwrap_or_else(|e| e.into_inner()), &p.topic, &p.payload),
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("demo ThingsBoard view: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
        View { seen }
    }

    pub fn snapshot(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn record(seen: &mut Seen, topic: &str, payload: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<Value>(payload) else {
        seen.malformed += 1;
        return;
    };
    match topic {
        "v1/gateway/connect" => match doc.get("device").and_then(Value::as_str) {
            Some(name) => {
                let d = seen.devices.entry(name.to_owned()).or_default();
                d.connected = true;
                d.device_type = doc.get("type").and_then(Value::as_str).map(str::to_owned);
            }
            None => seen.malformed += 1,
        },
        "v1/gateway/telemetry" => {
            let Some(devices) = doc.as_object() else {
                seen.malformed += 1;
                return;
            };
            for (name, entries) in devices {
                let d = seen.devices.entry(name.clone()).or_default();
                for e in entries.as_array().into_iter().flatten() {
                    match (e.get("ts").and_then(Value::as_i64), e.get("values").and_then(Value::as_object)) {
                        (Some(ts), Some(values)) => {
                            d.readings += 1;
                            seen.readings += 1;
                            if d.last.as_ref().is_none_or(|(last, _)| *last <= ts) {
                                d.last = Some((ts, values.clone()));
                            }
                        }
                        _ => seen.malformed += 1,
                    }
                }
            }
        }
        "v1/gateway/attributes" => {
            for (name, values) in doc.as_object().into_iter().flatten() {
                let d = seen.devices.entry(name.clone()).or_default();
                seen.attribute_updates += 1;
                for (k, v) in values.as_object().into_iter().flatten() {
                    d.attributes.insert(k.clone(), v.clone());
                }
            }
        }
        _ => seen.stats = doc.as_object().cloned(),
    }
}
