//! ThingsBoard's side of the benches that run the whole gateway: a client
//! of the bench's mosquitto that counts the telemetry datapoints tbgw
//! delivers, and keeps the largest store backlog its statistics report.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What ThingsBoard received so far.
#[derive(Default)]
pub struct Received {
    /// Telemetry datapoints (values) on `v1/gateway/telemetry`.
    pub datapoints: AtomicU64,
    /// The largest `storageBacklog` of tbgw's statistics.
    pub peak_backlog: AtomicU64,
}

/// Subscribe (returns once subscribed) and count in the background.
pub async fn count_datapoints(port: u16, received: Arc<Received>) -> anyhow::Result<()> {
    let mut o = MqttOptions::new("bench-thingsboard", "127.0.0.1", port);
    o.set_max_packet_size(16 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("v1/gateway/telemetry", QoS::AtLeastOnce).await?;
    c.subscribe("v1/devices/me/telemetry", QoS::AtLeastOnce).await?;
    let mut subacks = 0;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
            subacks += 1;
            if subacks == 2 {
                break;
            }
        }
    }
    tokio::spawn(async move {
        let _keep = c;
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                if p.topic == "v1/devices/me/telemetry" {
                    let stats: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    let backlog = stats["storageBacklog"].as_u64().unwrap_or(0);
                    received.peak_backlog.fetch_max(backlog, Ordering::Relaxed);
                    continue;
                }
                let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&p.payload) else { continue };
                let n: usize = doc
                    .as_object()
                    .map(|o| {
                        o.values()
                            .flat_map(|readings| readings.as_array().into_iter().flatten())
                            .map(|r| r["values"].as_object().map_or(0, |v| v.len()))
                            .sum()
                    })
                    .unwrap_or(0);
                received.datapoints.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}
