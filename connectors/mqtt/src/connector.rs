//! The running MQTT connector: subscribe, hand each message to its mapping's
//! converter, acknowledge it to the broker once the pipeline says its events
//! are stored.
//!
//! MQTT 3.1.1 and 5 are served by rumqttc's two clients behind one small
//! [`Protocol`] trait, so the connector's logic is written once. Three
//! pieces run:
//!
//! - the receive loop, which polls the event loop (and so reconnects),
//!   resubscribes when the broker forgot the session, and forwards
//!   messages; while the converter stage is full it waits, which is the
//!   backpressure reaching the broker;
//! - the acker, which turns the pipeline's confirmations into PUBACKs
//!   (manual acks: a QoS 1 message is acknowledged only once durable);
//! - on shutdown, the receive loop first stops forwarding (messages not yet
//!   taken stay with the broker), then keeps polling until the last acks and
//!   the DISCONNECT are out.

use crate::config::{BrokerConfig, MappingConfig, MqttConfig, MqttVersion, match_filter};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tbgw_core::connector::{Ack, Connector, ConnectorContext, RouteId, Uplink, UplinkSink};
use tbgw_core::{RawUplink, Source};
use tbgw_tls::rustls::ClientConfig;
use tokio::sync::mpsc;

/// An MQTT connector, configured, with the converter route of each mapping.
pub struct MqttConnector {
    name: String,
    config: MqttConfig,
    /// (filter to match incoming topics with, route), in mapping order.
    routes: Vec<(String, RouteId)>,
}

impl MqttConnector {
    /// `routes[i]` is the converter route of `config.mappings[i]`.
    pub fn new(name: impl Into<String>, config: MqttConfig, routes: Vec<RouteId>) -> MqttConnector {
        let routes =
            config.mappings.iter().zip(routes).map(|(m, r)| (match_filter(&m.topic_filter).to_owned(), r)).collect();
        MqttConnector { name: name.into(), config, routes }
    }

    /// The first mapping whose filter matches `topic`, as the Python gateway
    /// picks it.
    fn route_for(&self, topic: &str) -> Option<RouteId> {
        self.routes.iter().find(|(filter, _)| rumqttc::matches(topic, filter)).map(|(_, r)| *r)
    }

    fn subscriptions(&self) -> Vec<(String, u8)> {
        self.config.mappings.iter().map(|m: &MappingConfig| (m.topic_filter.clone(), m.qos)).collect()
    }
}

impl Connector for MqttConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            match self.config.broker.version {
                MqttVersion::V311 => run::<V311>(*self, ctx).await,
                MqttVersion::V5 => run::<V5>(*self, ctx).await,
            }
        })
    }
}

/// What a poll of the event loop gave.
enum Polled<P> {
    Connected {
        session_present: bool,
    },
    Message(P),
    /// Our DISCONNECT went out.
    Disconnected,
    Error(String),
    Other,
}

/// The parts of a rumqttc client (3.1.1 or 5) the connector uses.
trait Protocol: Send + 'static {
    type Client: Clone + Send + Sync + 'static;
    type EventLoop: Send + 'static;
    type Publish: Send + 'static;

    fn connect(b: &BrokerConfig, tls: Option<Arc<ClientConfig>>) -> (Self::Client, Self::EventLoop);
    fn poll(el: &mut Self::EventLoop) -> impl Future<Output = Polled<Self::Publish>> + Send;
    fn subscribe(client: &Self::Client, filters: &[(String, u8)]) -> Result<(), String>;
    fn ack(client: &Self::Client, p: Self::Publish) -> impl Future<Output = bool> + Send;
    fn disconnect(client: &Self::Client) -> impl Future<Output = ()> + Send;
    /// Topic, payload, QoS of a message.
    fn parts(p: &Self::Publish) -> (&str, &[u8], u8);
    /// What an ack needs of a message (its packet id and QoS), without the payload.
    fn ack_handle(p: &Self::Publish) -> Self::Publish;
}

fn qos(q: u8) -> rumqttc::QoS {
    if q == 0 { rumqttc::QoS::AtMostOnce } else { rumqttc::QoS::AtLeastOnce }
}

fn transport(tls: Option<Arc<ClientConfig>>) -> Option<rumqttc::Transport> {
    tls.map(|t| rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(t)))
}

struct V311;

impl Protocol for V311 {
    type Client = rumqttc::AsyncClient;
    type EventLoop = rumqttc::EventLoop;
    type Publish = rumqttc::Publish;

    fn connect(b: &BrokerConfig, tls: Option<Arc<ClientConfig>>) -> (Self::Client, Self::EventLoop) {
        let mut o = rumqttc::MqttOptions::new(b.client_id.clone(), b.host.clone(), b.port);
        o.set_keep_alive(b.keep_alive)
            .set_clean_session(b.clean_session)
            .set_manual_acks(true)
            .set_max_packet_size(256 << 20, 1 << 20);
        if let Some(user) = &b.username {
            o.set_credentials(user.clone(), b.password.clone().unwrap_or_default());
        }
        if let Some(t) = transport(tls) {
            o.set_transport(t);
        }
        rumqttc::AsyncClient::new(o, 4096)
    }

    async fn poll(el: &mut Self::EventLoop) -> Polled<Self::Publish> {
        use rumqttc::{Event, Outgoing, Packet};
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => Polled::Connected { session_present: a.session_present },
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Message(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Disconnected,
            Ok(_) => Polled::Other,
            Err(e) => Polled::Error(e.to_string()),
        }
    }

    fn subscribe(client: &Self::Client, filters: &[(String, u8)]) -> Result<(), String> {
        let filters = filters.iter().map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos(*q)));
        client.try_subscribe_many(filters).map_err(|e| e.to_string())
    }

    async fn ack(client: &Self::Client, p: Self::Publish) -> bool {
        client.ack(&p).await.is_ok()
    }

    async fn disconnect(client: &Self::Client) {
        let _ = client.disconnect().await;
    }

    fn parts(p: &Self::Publish) -> (&str, &[u8], u8) {
        (&p.topic, &p.payload, p.qos as u8)
    }

    fn ack_handle(p: &Self::Publish) -> Self::Publish {
        let mut h = rumqttc::Publish::new("", p.qos, Vec::new());
        h.pkid = p.pkid;
        h
    }
}

struct V5;

impl Protocol for V5 {
    type Client = rumqttc::v5::AsyncClient;
    type EventLoop = rumqttc::v5::EventLoop;
    type Publish = rumqttc::v5::mqttbytes::v5::Publish;

    fn connect(b: &BrokerConfig, tls: Option<Arc<ClientConfig>>) -> (Self::Client, Self::EventLoop) {
        let mut o = rumqttc::v5::MqttOptions::new(b.client_id.clone(), b.host.clone(), b.port);
        o.set_keep_alive(b.keep_alive)
            .set_clean_start(b.clean_start)
            .set_manual_acks(true)
            .set_receive_maximum(Some(b.receive_maximum))
            .set_max_packet_size(Some(256 << 20));
        if b.session_expiry_interval > 0 {
            o.set_session_expiry_interval(Some(b.session_expiry_interval));
        }
        if let Some(user) = &b.username {
            o.set_credentials(user.clone(), b.password.clone().unwrap_or_default());
        }
        if let Some(t) = transport(tls) {
            o.set_transport(t);
        }
        rumqttc::v5::AsyncClient::new(o, 4096)
    }

    async fn poll(el: &mut Self::EventLoop) -> Polled<Self::Publish> {
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::v5::Packet;
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => Polled::Connected { session_present: a.session_present },
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Message(p),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Polled::Disconnected,
            Ok(_) => Polled::Other,
            Err(e) => Polled::Error(e.to_string()),
        }
    }

    fn subscribe(client: &Self::Client, filters: &[(String, u8)]) -> Result<(), String> {
        let filters = filters.iter().map(|(f, q)| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), v5_qos(*q)));
        client.try_subscribe_many(filters).map_err(|e| e.to_string())
    }

    async fn ack(client: &Self::Client, p: Self::Publish) -> bool {
        client.ack(&p).await.is_ok()
    }

    async fn disconnect(client: &Self::Client) {
        let _ = client.disconnect().await;
    }

    fn parts(p: &Self::Publish) -> (&str, &[u8], u8) {
        (std::str::from_utf8(&p.topic).unwrap_or(""), &p.payload, p.qos as u8)
    }

    fn ack_handle(p: &Self::Publish) -> Self::Publish {
        let mut h = rumqttc::v5::mqttbytes::v5::Publish::new("", p.qos, Vec::new(), None);
        h.pkid = p.pkid;
        h
    }
}

fn v5_qos(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    if q == 0 { rumqttc::v5::mqttbytes::QoS::AtMostOnce } else { rumqttc::v5::mqttbytes::QoS::AtLeastOnce }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn run<P: Protocol>(conn: MqttConnector, ctx: ConnectorContext) {
    let b = &conn.config.broker;
    let target = format!("{}:{}", b.host, b.port);
    let name = conn.name.clone();
    let tls = match &b.tls {
        Some(files) => match tbgw_tls::client_config(files) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(connector = %name, "cannot use the broker's TLS settings: {e}; the connector does not start");
                return;
            }
        },
        None => None,
    };
    let (client, mut eventloop) = P::connect(b, tls);
    let subscriptions = conn.subscriptions();

    // The acker: the pipeline's confirmations become PUBACKs.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<P::Publish>();
    let acker = {
        let (client, stats) = (client.clone(), ctx.stats.clone());
        tokio::spawn(async move {
            while let Some(p) = ack_rx.recv().await {
                if P::ack(&client, p).await {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut sink: Option<UplinkSink> = Some(ctx.sink);
    let mut backoff = Duration::from_millis(500);
    let (mut connected_once, mut failures) = (false, 0u64);
    loop {
        let polled = tokio::select! {
            p = P::poll(&mut eventloop) => p,
            _ = ctx.finish.cancelled() => break,
        };
        if sink.is_some() && ctx.stop_intake.is_cancelled() {
            // Stop taking messages; the converter stage drains without us.
            sink = None;
        }
        match polled {
            Polled::Connected { session_present } => {
                ctx.stats.connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(500);
                failures = 0;
                let verb = if connected_once { "reconnected" } else { "connected" };
                tracing::info!(connector = %name, session_present, "{verb} to the MQTT broker at {target}");
                connected_once = true;
                if !session_present && let Err(e) = P::subscribe(&client, &subscriptions) {
                    tracing::error!(connector = %name, "subscribing failed: {e}");
                }
            }
            Polled::Message(p) => {
                ctx.stats.received.fetch_add(1, Ordering::Relaxed);
                // Stopping: leave it unacknowledged, the broker keeps it.
                let Some(s) = &sink else { continue };
                let (topic, payload, q) = P::parts(&p);
                let ack = (q > 0).then(|| {
                    let (tx, handle) = (ack_tx.clone(), P::ack_handle(&p));
                    Ack::new(move || {
                        let _ = tx.send(handle);
                    })
                });
                let Some(route) = conn.route_for(topic) else {
                    ctx.stats.unmatched.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(connector = %name, topic, "no mapping matches this topic; message dropped");
                    if let Some(ack) = ack {
                        ack.confirm();
                    }
                    continue;
                };
                let raw = RawUplink {
                    source: Source::Topic(topic.to_owned()),
                    payload: payload.to_vec(),
                    metadata: vec![("qos".to_owned(), q.to_string())],
                    received_at: now_ms(),
                };
                if s.send(topic, Uplink { route, raw, ack }).await.is_err() {
                    sink = None;
                }
            }
            Polled::Error(e) => {
                ctx.stats.connected.store(false, Ordering::Relaxed);
                failures += 1;
                if failures == 1 {
                    tracing::warn!(connector = %name, "MQTT broker at {target}: {e}; reconnecting");
                } else {
                    tracing::debug!(connector = %name, "MQTT broker at {target}: {e} ({failures} failures in a row)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctx.finish.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Polled::Disconnected | Polled::Other => {}
        }
    }

    // Finishing: the pipeline has confirmed what it will; send those acks
    // and the DISCONNECT, polling so they go out, for a short while at most.
    drop(sink);
    drop(ack_tx);
    let closing = async {
        let _ = acker.await;
        P::disconnect(&client).await;
    };
    tokio::pin!(closing);
    let deadline = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(deadline);
    let mut closed = false;
    loop {
        tokio::select! {
            _ = &mut closing, if !closed => closed = true,
            p = P::poll(&mut eventloop) => match p {
                Polled::Disconnected | Polled::Error(_) => break,
                _ => {}
            },
            _ = &mut deadline => break,
        }
    }
    ctx.stats.connected.store(false, Ordering::Relaxed);
    tracing::info!(connector = %name, "stopped");
}
