//! The demo's device simulator: temperature sensors publishing JSON to
//! `sensor/<device>/data`, the shape `config/mqtt.json`'s first mapping
//! converts. Values follow [`reading`], so a reader can check them.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The name of simulated device `d`.
pub fn device_name(d: usize) -> String {
    format!("demo-sensor-{d:03}")
}

/// The (temperature, humidity) device `d` reports at tick `t`.
pub fn reading(d: usize, t: u64) -> (f64, f64) {
    let temperature = (200 + (d % 10) as u64 * 10 + t % 50) as f64 / 10.0;
    let humidity = (40 + (t + d as u64) % 20) as f64;
    (temperature, humidity)
}

/// The message device `d` publishes at tick `t`.
pub fn message(d: usize, t: u64) -> String {
    let (temp, hum) = reading(d, t);
    format!(r#"{{"temp":{temp},"hum":{hum},"sensorModel":"TH-{}"}}"#, d % 3)
}

/// The running simulator.
pub struct Devices {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Messages the broker acknowledged.
    acked: Arc<AtomicU64>,
    published: Arc<AtomicU64>,
}

impl Devices {
    /// `count` devices on the broker at `port`, each publishing every `interval`.
    pub fn start(port: u16, count: usize, interval: Duration) -> Devices {
        let mut opts = MqttOptions::new("tbgw-demo-devices", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, count.max(1) * 4);
        let (stop, acked, published) =
            (CancellationToken::new(), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let acks = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("demo devices: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let task = {
            let (stop, published) = (stop.clone(), published.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for t in 0u64.. {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => break,
                    }
                    for d in 0..count {
                        let topic = format!("sensor/{}/data", device_name(d));
                        if client.publish(topic, QoS::AtLeastOnce, false, message(d, t)).await.is_err() {
                            return;
                        }
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Devices { stop, task, acked, published }
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Stop publishing; returns how many messages the broker acknowledged
    /// (waiting a little for the last acknowledgements).
    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        let published = self.published.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.acked.load(Ordering::Relaxed) < published && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.acked.load(Ordering::Relaxed)
    }
}
