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
//!   (manual acks: a QoS 1 message is acknowledged only once durable), in
//!   the order the messages came ([`InOrder`]): converter threads finish
//!   out of order, and MQTT wants PUBACKs in receive order (MQTT-4.6.0-2;
//!   mosquitto over-sends past its receive maximum and reorders otherwise);
//! - on shutdown, the receive loop first stops forwarding (messages not yet
//!   taken stay with the broker), then keeps polling until the last acks and
//!   the DISCONNECT are out.
//!
//! # Requests from ThingsBoard
//!
//! The router hands the connector publishes for a device (made by the
//! downlink converter), a two-way RPC's with the response it waits for. The
//! receive loop publishes them; for a two-way RPC it first subscribes to the
//! response topic (one subscription per topic however many RPCs wait on it),
//! then publishes the request once the SUBACK is in. MQTT brokers handle one
//! connection's packets in order, so the subscription would be in place
//! before the device sees the request even without the wait: the wait is
//! for latency. A broker with Nagle on (mosquitto's default,
//! `set_tcp_nodelay false`) holds a small packet while the one before it is
//! unacknowledged, and our kernel delays its ACK of a packet we do not
//! answer by ~40 ms: a SUBACK followed by the device's answer cost an RPC
//! 40 ms. Sent after the SUBACK, the request carries its ACK, and the answer
//! comes at once. (A SUBACK the accounting did not expect, after a
//! reconnect, only releases a request early: still in order, so still
//! safe.) For the same reason a topic no RPC waits on any more is
//! unsubscribed a little later, with the others of the moment
//! ([`UNSUBSCRIBE_EVERY`]): one UNSUBACK per period, not one per RPC. The
//! first message on that exact topic answers the oldest RPC
//! waiting on it, as it came (the converter makes ThingsBoard's reply of
//! it); a deadline answers it with an error otherwise. A message on a
//! pending response topic goes to the RPC even if a mapping matches it too.
//!
//! Devices' own requests (the topics of `connectRequests`,
//! `disconnectRequests`, `attributeRequests`) go, after the mappings, to the
//! requests route, whose converter recognises them like any message.

use crate::config::{BrokerConfig, MappingConfig, MqttConfig, MqttVersion, match_filter};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tbgw_core::connector::{Ack, Connector, ConnectorContext, ConnectorStats, RouteId, Uplink, UplinkSink};
use tbgw_core::downlink::{Answered, Answers, DeviceJob, Reply, ToConnector};
use tbgw_core::{
    DownlinkMessage, MqttMessage, MqttPublish, MqttResponse, RawUplink, RpcAnswer, RpcRequest, Source, now_ms,
};
use tbgw_tls::rustls::ClientConfig;
use tokio::sync::mpsc;

/// An MQTT connector, configured, with the converter route of each mapping.
pub struct MqttConnector {
    name: String,
    config: MqttConfig,
    /// (filter to match incoming topics with, route): the mappings, in their
    /// order, then the device-request topics.
    routes: Vec<(String, RouteId)>,
}

impl MqttConnector {
    /// `routes[i]` is the converter route of `config.mappings[i]`; the one
    /// after them, of the device-request topics (`config.request_filters`).
    pub fn new(name: impl Into<String>, config: MqttConfig, routes: Vec<RouteId>) -> MqttConnector {
        let mut filters: Vec<&str> = config.mappings.iter().map(|m| match_filter(&m.topic_filter)).collect();
        let requests = routes.get(config.mappings.len()).copied();
        let mut routes: Vec<(String, RouteId)> =
            filters.drain(..).zip(routes.iter().copied()).map(|(f, r)| (f.to_owned(), r)).collect();
        if let Some(r) = requests {
            routes.extend(config.request_filters.iter().map(|f| (match_filter(f).to_owned(), r)));
        }
        MqttConnector { name: name.into(), config, routes }
    }

    /// The first mapping whose filter matches `topic`, as the Python gateway
    /// picks it; else the device-request route if a request filter matches.
    fn route_for(&self, topic: &str) -> Option<RouteId> {
        self.routes.iter().find(|(filter, _)| rumqttc::matches(topic, filter)).map(|(_, r)| *r)
    }

    fn subscriptions(&self) -> Vec<(String, u8)> {
        let mut all: Vec<(String, u8)> =
            self.config.mappings.iter().map(|m: &MappingConfig| (m.topic_filter.clone(), m.qos)).collect();
        for f in &self.config.request_filters {
            if !all.iter().any(|(g, _)| g == f) {
                all.push((f.clone(), 1));
            }
        }
        all
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
    /// The broker took a SUBSCRIBE.
    Subscribed,
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
    fn unsubscribe(client: &Self::Client, filter: &str) -> Result<(), String>;
    /// Queue a publish without waiting (the caller may be the task that
    /// polls the event loop).
    fn publish(client: &Self::Client, topic: &str, qos: u8, retain: bool, payload: Vec<u8>) -> Result<(), String>;
    fn ack(client: &Self::Client, p: Self::Publish) -> impl Future<Output = bool> + Send;
    fn disconnect(client: &Self::Client) -> impl Future<Output = ()> + Send;
    /// Topic, payload, QoS of a message.
    fn parts(p: &Self::Publish) -> (&str, &[u8], u8);
    /// Whether the broker sent it as retained.
    fn retained(p: &Self::Publish) -> bool;
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
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 4096);
        // Requests for devices and acks go out at once, not after the
        // previous segment's ACK (Nagle).
        eventloop.network_options.set_tcp_nodelay(true);
        (client, eventloop)
    }

    async fn poll(el: &mut Self::EventLoop) -> Polled<Self::Publish> {
        use rumqttc::{Event, Outgoing, Packet};
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => Polled::Connected { session_present: a.session_present },
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Message(p),
            Ok(Event::Incoming(Packet::SubAck(_))) => Polled::Subscribed,
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Disconnected,
            Ok(_) => Polled::Other,
            Err(e) => Polled::Error(e.to_string()),
        }
    }

    fn subscribe(client: &Self::Client, filters: &[(String, u8)]) -> Result<(), String> {
        let filters = filters.iter().map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos(*q)));
        client.try_subscribe_many(filters).map_err(|e| e.to_string())
    }

    fn unsubscribe(client: &Self::Client, filter: &str) -> Result<(), String> {
        client.try_unsubscribe(filter).map_err(|e| e.to_string())
    }

    fn publish(client: &Self::Client, topic: &str, q: u8, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        client.try_publish(topic, qos(q), retain, payload).map_err(|e| e.to_string())
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

    fn retained(p: &Self::Publish) -> bool {
        p.retain
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
        let mut network = o.network_options();
        network.set_tcp_nodelay(true);
        o.set_network_options(network);
        rumqttc::v5::AsyncClient::new(o, 4096)
    }

    async fn poll(el: &mut Self::EventLoop) -> Polled<Self::Publish> {
        use rumqttc::v5::Event;
        use rumqttc::v5::mqttbytes::v5::Packet;
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => Polled::Connected { session_present: a.session_present },
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Message(p),
            Ok(Event::Incoming(Packet::SubAck(_))) => Polled::Subscribed,
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Polled::Disconnected,
            Ok(_) => Polled::Other,
            Err(e) => Polled::Error(e.to_string()),
        }
    }

    fn subscribe(client: &Self::Client, filters: &[(String, u8)]) -> Result<(), String> {
        let filters = filters.iter().map(|(f, q)| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), v5_qos(*q)));
        client.try_subscribe_many(filters).map_err(|e| e.to_string())
    }

    fn unsubscribe(client: &Self::Client, filter: &str) -> Result<(), String> {
        client.try_unsubscribe(filter).map_err(|e| e.to_string())
    }

    fn publish(client: &Self::Client, topic: &str, q: u8, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        client.try_publish(topic, v5_qos(q), retain, payload).map_err(|e| e.to_string())
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

    fn retained(p: &Self::Publish) -> bool {
        p.retain
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

/// Two-way RPCs waiting for their answer, by response topic, with their
/// deadlines; the requests waiting for their topic's SUBACK; the SUBSCRIBEs
/// waiting for theirs, in the order they were sent (brokers answer in order).
#[derive(Default)]
struct Pending {
    by_topic: HashMap<String, VecDeque<(u64, Answers)>>,
    deadlines: BinaryHeap<Reverse<(tokio::time::Instant, u64, String)>>,
    next_id: u64,
    /// By response topic: each RPC's publishes, sent when the topic's SUBACK comes.
    held: HashMap<String, Vec<(u64, Vec<MqttPublish>)>>,
    subscribes: VecDeque<Subscribe>,
    /// Response topics no RPC waits on, unsubscribed together at `unsubscribe_at`.
    retired: Vec<String>,
    unsubscribe_at: Option<tokio::time::Instant>,
}

/// How long answered RPCs' response topics stay subscribed, so that one
/// UNSUBSCRIBE goes for all of them: the broker's UNSUBACK is a packet we
/// do not answer, and under Nagle it holds up the broker's next packet to
/// us until our delayed ACK (see the module's doc); once per this period,
/// not once per RPC.
const UNSUBSCRIBE_EVERY: Duration = Duration::from_secs(2);

/// What a SUBSCRIBE in flight was for.
struct Subscribe {
    /// The mappings' topics (a new session).
    mappings: bool,
    /// Response topics whose held requests go when it is acknowledged.
    topics: Vec<String>,
}

impl Pending {
    /// Wait for an answer on `topic`: its id, and true when the topic is
    /// new (subscribe).
    fn add(&mut self, topic: &str, timeout: Duration, reply: Answers) -> (u64, bool) {
        let id = self.next_id;
        self.next_id += 1;
        self.deadlines.push(Reverse((tokio::time::Instant::now() + timeout, id, topic.to_owned())));
        let queue = self.by_topic.entry(topic.to_owned()).or_default();
        queue.push_back((id, reply));
        let new = queue.len() == 1;
        // Retired but still subscribed: no SUBSCRIBE needed.
        let still_subscribed = new && self.retired.iter().any(|t| t == topic);
        if still_subscribed {
            self.retired.retain(|t| t != topic);
        }
        (id, new && !still_subscribed)
    }

    /// No RPC waits on `topic` any more: unsubscribe it with the others, soon.
    fn retire(&mut self, topic: &str) {
        if !self.retired.iter().any(|t| t == topic) {
            self.retired.push(topic.to_owned());
        }
        self.unsubscribe_at.get_or_insert_with(|| tokio::time::Instant::now() + UNSUBSCRIBE_EVERY);
    }

    /// The topics to unsubscribe now, if their time has come.
    fn due_unsubscribes(&mut self) -> Vec<String> {
        match self.unsubscribe_at {
            Some(at) if at <= tokio::time::Instant::now() => {
                self.unsubscribe_at = None;
                std::mem::take(&mut self.retired)
            }
            _ => Vec::new(),
        }
    }

    /// Stop waiting for `id`: its reply, and whether `topic` has no RPC left.
    fn cancel(&mut self, topic: &str, id: u64) -> Option<(Answers, bool)> {
        let queue = self.by_topic.get_mut(topic)?;
        let pos = queue.iter().position(|(i, _)| *i == id)?;
        let (_, reply) = queue.remove(pos)?;
        let empty = queue.is_empty();
        if empty {
            self.by_topic.remove(topic);
        }
        self.unhold(topic, id);
        Some((reply, empty))
    }

    /// The oldest RPC waiting on `topic`, and whether none is left (unsubscribe).
    fn take(&mut self, topic: &str) -> Option<(Answers, bool)> {
        let queue = self.by_topic.get_mut(topic)?;
        let (id, reply) = queue.pop_front()?;
        let empty = queue.is_empty();
        if empty {
            self.by_topic.remove(topic);
        }
        // Answered before its request went out (a retained message): it stays unsent.
        self.unhold(topic, id);
        Some((reply, empty))
    }

    /// The next RPC deadline or unsubscribe time.
    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        let rpc = self.deadlines.peek().map(|Reverse((t, _, _))| *t);
        match (rpc, self.unsubscribe_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The RPCs past their deadline: (topic, reply, whether the topic has
    /// no RPC left).
    fn expired(&mut self) -> Vec<(String, Answers, bool)> {
        let now = tokio::time::Instant::now();
        let mut out = Vec::new();
        while let Some(Reverse((t, _, _))) = self.deadlines.peek()
            && *t <= now
        {
            let Some(Reverse((_, id, topic))) = self.deadlines.pop() else { break };
            let Some(queue) = self.by_topic.get_mut(&topic) else { continue };
            // Answered RPCs are gone from their queue already.
            let Some(pos) = queue.iter().position(|(i, _)| *i == id) else { continue };
            let Some((_, reply)) = queue.remove(pos) else { continue };
            let empty = queue.is_empty();
            if empty {
                self.by_topic.remove(&topic);
            }
            // A request that never went out (no SUBACK in time) stays unsent.
            self.unhold(&topic, id);
            out.push((topic, reply, empty));
        }
        out
    }

    /// Whether `topic`'s SUBACK is still awaited (requests on it wait).
    fn awaiting_suback(&self, topic: &str) -> bool {
        self.held.contains_key(topic)
    }

    fn hold(&mut self, topic: &str, id: u64, publishes: Vec<MqttPublish>) {
        self.held.entry(topic.to_owned()).or_default().push((id, publishes));
    }

    /// Forget RPC `id`'s held publishes; once no RPC waits on `topic`,
    /// its SUBACK is not waited for either (a later RPC subscribes anew).
    fn unhold(&mut self, topic: &str, id: u64) {
        if let Some(held) = self.held.get_mut(topic) {
            held.retain(|(i, _)| *i != id);
        }
        if !self.by_topic.contains_key(topic) {
            self.held.remove(topic);
        }
    }

    /// A SUBACK came: what its SUBSCRIBE was for (mappings: whether it was
    /// the mappings'), and the publishes it releases, in order.
    #[allow(clippy::type_complexity)]
    fn subscribed(&mut self) -> (bool, Vec<(String, u64, Vec<MqttPublish>)>) {
        let Some(done) = self.subscribes.pop_front() else { return (false, Vec::new()) };
        let mut release = Vec::new();
        for topic in done.topics {
            for (id, publishes) in self.held.remove(&topic).unwrap_or_default() {
                release.push((topic.clone(), id, publishes));
            }
        }
        (done.mappings, release)
    }

    /// A new connection: no SUBSCRIBE of the last one will be answered.
    /// The response topics to subscribe again: all of them when the broker
    /// forgot the session, else those whose requests still wait.
    fn reconnected(&mut self, session_present: bool) -> Vec<String> {
        self.subscribes.clear();
        if !session_present {
            self.retired.clear();
        }
        if session_present { self.held.keys().cloned().collect() } else { self.by_topic.keys().cloned().collect() }
    }
}

/// What a connector RPC's params ask to publish.
fn publish_of(params: &str) -> Result<MqttPublish, &'static str> {
    let doc: serde_json::Value = match serde_json::from_str(params) {
        Ok(serde_json::Value::Object(o)) => serde_json::Value::Object(o),
        _ => return Err("params: expected an object with requestTopicExpression"),
    };
    let text = |keys: [&str; 2]| keys.iter().find_map(|k| doc.get(*k)).cloned();
    let Some(serde_json::Value::String(topic)) = text(["requestTopicExpression", "topic"]) else {
        return Err("params.requestTopicExpression: required (the topic to publish to)");
    };
    let payload = match text(["valueExpression", "value"]) {
        Some(serde_json::Value::String(s)) => s.into_bytes(),
        Some(other) => other.to_string().into_bytes(),
        None => Vec::new(),
    };
    let response = match text(["responseTopicExpression", "responseTopic"]) {
        Some(serde_json::Value::String(rt)) => Some(MqttResponse {
            topic: rt,
            qos: 1,
            timeout_ms: doc
                .get("responseTimeout")
                .and_then(|t| t.as_u64())
                .map_or(10_000, |t| t.min(u64::from(u32::MAX)) as u32),
        }),
        _ => None,
    };
    Ok(MqttPublish {
        topic,
        payload,
        qos: doc.get("qos").and_then(|q| q.as_u64()).unwrap_or(0).min(1) as u8,
        retain: doc.get("retain") == Some(&serde_json::Value::Bool(true)),
        response,
    })
}

/// The connector's side of requests from ThingsBoard.
struct Downlink<'a, P: Protocol> {
    client: &'a P::Client,
    name: &'a str,
    target: &'a str,
    stats: &'a ConnectorStats,
    pending: Pending,
}

impl<P: Protocol> Downlink<'_, P> {
    fn fail(&self, reply: Answers, why: String) {
        self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Err(why));
    }

    fn job(&mut self, job: DeviceJob, connected: bool) {
        let what = format!("{} for {}", job.kind, job.device);
        if !connected {
            let why = format!("the connector `{}` is not connected to its broker at {}", self.name, self.target);
            tracing::debug!(connector = %self.name, "{what}: {why}");
            return self.fail(job.reply, why);
        }
        let mut publishes = Vec::with_capacity(job.messages.len());
        for m in job.messages {
            match m {
                DownlinkMessage::Mqtt(p) => publishes.push(p),
                other => {
                    let why = format!(
                        "the downlink converter made an {} message for `{}`: the mqtt connector sends MQTT publishes",
                        other.kind(),
                        job.device
                    );
                    return self.fail(job.reply, why);
                }
            }
        }
        // At most one publish waits for an answer: the RPC's request.
        let waiting = publishes.iter().filter(|p| p.response.is_some()).count();
        if waiting > 1 {
            let why = format!(
                "the downlink converter made {waiting} publishes for `{}` that wait for an answer: \
                 an MQTT request waits for one",
                job.device
            );
            return self.fail(job.reply, why);
        }
        let wait = publishes.iter().find_map(|p| p.response.clone());
        // Subscribe, then publish the request once the SUBACK is in (the
        // module's doc says why).
        if let Some(MqttResponse { topic, qos, timeout_ms }) = wait {
            let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
            let (id, new_topic) = self.pending.add(&topic, timeout, job.reply);
            if new_topic {
                if let Err(e) = P::subscribe(self.client, &[(topic.clone(), qos.min(1))]) {
                    if let Some((reply, _)) = self.pending.cancel(&topic, id) {
                        self.fail(reply, format!("cannot subscribe to the response topic `{topic}`: {e}"));
                    }
                    return;
                }
                self.pending.subscribes.push_back(Subscribe { mappings: false, topics: vec![topic.clone()] });
            }
            if self.pending.awaiting_suback(&topic) || new_topic {
                self.pending.hold(&topic, id, publishes);
                return;
            }
            self.publish_request(&topic, id, publishes);
            return;
        }
        for p in publishes {
            if let Err(e) = self.send(p) {
                return self.fail(job.reply, e);
            }
        }
        let _ = job.reply.send(Ok(Vec::new()));
    }

    /// Publish a two-way RPC's messages; on failure it is answered with the error.
    fn publish_request(&mut self, topic: &str, id: u64, publishes: Vec<MqttPublish>) {
        for p in publishes {
            if let Err(e) = self.send(p) {
                // Nothing will answer a request that did not go out.
                if let Some((reply, last)) = self.pending.cancel(topic, id) {
                    if last {
                        self.pending.retire(topic);
                    }
                    self.fail(reply, e);
                }
                return;
            }
        }
    }

    /// A SUBACK came: send the requests it released; true when it was the
    /// mappings' SUBSCRIBE.
    fn subscribed(&mut self) -> bool {
        let (mappings, release) = self.pending.subscribed();
        for (topic, id, publishes) in release {
            self.publish_request(&topic, id, publishes);
        }
        mappings
    }

    fn send(&self, p: MqttPublish) -> Result<(), String> {
        P::publish(self.client, &p.topic, p.qos.min(1), p.retain, p.payload)
            .map_err(|e| format!("publishing to `{}` failed: {e}", p.topic))?;
        self.stats.sent_to_devices.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// An RPC to the connector itself (`mqtt_<anything>` on the gateway):
    /// publish `params` as the Python gateway's connector RPC does, with
    /// `requestTopicExpression` (or `topic`), `valueExpression` (or
    /// `value`), and optionally `responseTopicExpression` and
    /// `responseTimeout` (ms) to wait for an answer, which is the reply.
    fn connector_rpc(&mut self, method: &str, params: &str, reply: Reply, connected: bool) {
        let publish = match publish_of(params) {
            Ok(p) => p,
            Err(why) => {
                self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(why.to_owned()));
                return;
            }
        };
        // Answered as a device's RPC is, the answer being the reply.
        let request = RpcRequest { device: String::new(), id: 0, method: method.to_owned(), params: params.to_owned() };
        let (tx, rx) = tokio::sync::oneshot::channel::<Answered>();
        tokio::spawn(async move {
            let outcome = match rx.await {
                Ok(Ok(answers)) => Ok(RpcAnswer { request, answers }.plain_reply()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("the connector stopped".into()),
            };
            let _ = reply.send(outcome);
        });
        let job = DeviceJob {
            device: String::new(),
            kind: tbgw_core::downlink::JobKind::Rpc { id: 0, method: format!("mqtt_{method}") },
            messages: vec![DownlinkMessage::Mqtt(publish)],
            reply: tx,
        };
        self.job(job, connected);
    }

    /// A message on `topic` answers a pending RPC: true when it did.
    fn answered(&mut self, topic: &str, payload: &[u8], qos: u8) -> bool {
        let Some((reply, last)) = self.pending.take(topic) else { return false };
        let answer = RawUplink {
            source: Source::Mqtt(MqttMessage { topic: topic.to_owned(), qos, retain: false }),
            device: None,
            payload: payload.to_vec(),
            metadata: Vec::new(),
            received_at: now_ms(),
        };
        let _ = reply.send(Ok(vec![answer]));
        if last {
            self.pending.retire(topic);
        }
        true
    }

    /// Answer the RPCs past their deadline; unsubscribe retired topics when due.
    fn expire(&mut self) {
        for (topic, reply, last) in self.pending.expired() {
            if last {
                self.pending.retire(&topic);
            }
            self.fail(reply, format!("no answer from the device on `{topic}` in time"));
        }
        for topic in self.pending.due_unsubscribes() {
            let _ = P::unsubscribe(self.client, &topic);
        }
    }
}

async fn run<P: Protocol>(conn: MqttConnector, mut ctx: ConnectorContext) {
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

    // The acker: the pipeline's confirmations become PUBACKs, in the order
    // the messages came (each QoS 1 message numbered as it arrives).
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(u64, P::Publish)>();
    let acker = {
        let (client, stats) = (client.clone(), ctx.stats.clone());
        tokio::spawn(async move {
            let mut order = InOrder::default();
            while let Some((n, p)) = ack_rx.recv().await {
                for p in order.done(n, p) {
                    if P::ack(&client, p).await {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut received_qos1 = 0u64;
    let mut number = || {
        received_qos1 += 1;
        received_qos1 - 1
    };

    let stats = ctx.stats.clone();
    let mut down =
        Downlink::<P> { client: &client, name: &name, target: &target, stats: &stats, pending: Pending::default() };
    let mut sink: Option<UplinkSink> = Some(ctx.sink);
    let mut backoff = Duration::from_millis(500);
    let (mut connected_once, mut failures) = (false, 0u64);
    let mut connected = false;
    loop {
        let deadline = down.pending.next_deadline();
        let polled = tokio::select! {
            p = P::poll(&mut eventloop) => p,
            _ = ctx.finish.cancelled() => break,
            Some(job) = ctx.downlink.jobs.recv() => {
                match job {
                    ToConnector::Device(job) => down.job(job, connected),
                    ToConnector::ConnectorRpc { method, params, reply } => {
                        down.connector_rpc(&method, &params, reply, connected)
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                down.expire();
                continue;
            }
        };
        if sink.is_some() && ctx.stop_intake.is_cancelled() {
            // Stop taking messages; the converter stage drains without us.
            sink = None;
        }
        match polled {
            Polled::Connected { session_present } => {
                ctx.stats.connected.store(true, Ordering::Relaxed);
                connected = true;
                backoff = Duration::from_millis(500);
                failures = 0;
                let verb = if connected_once { "reconnected" } else { "connected" };
                tracing::info!(connector = %name, session_present, "{verb} to the MQTT broker at {target}");
                connected_once = true;
                let responses = down.pending.reconnected(session_present);
                let mut all = if session_present { Vec::new() } else { subscriptions.clone() };
                all.extend(responses.iter().map(|t| (t.clone(), 1)));
                if !all.is_empty() {
                    match P::subscribe(&client, &all) {
                        Ok(()) => down
                            .pending
                            .subscribes
                            .push_back(Subscribe { mappings: !session_present, topics: responses }),
                        Err(e) => tracing::error!(connector = %name, "subscribing failed: {e}"),
                    }
                }
            }
            // From here the broker delivers what is published on the
            // mappings' topics (with a new session, not before).
            Polled::Subscribed => {
                if down.subscribed() {
                    tracing::info!(connector = %name, "subscribed to {} topic filter(s) at {target}", subscriptions.len());
                }
            }
            Polled::Message(p) => {
                ctx.stats.received.fetch_add(1, Ordering::Relaxed);
                let (topic, payload, q) = P::parts(&p);
                if down.answered(topic, payload, q) {
                    if q > 0 {
                        let _ = ack_tx.send((number(), P::ack_handle(&p)));
                    }
                    continue;
                }
                // Stopping: leave it unacknowledged, the broker keeps it.
                let Some(s) = &sink else { continue };
                let ack = (q > 0).then(|| {
                    let (tx, handle, n) = (ack_tx.clone(), P::ack_handle(&p), number());
                    Ack::new(move || {
                        let _ = tx.send((n, handle));
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
                    source: Source::Mqtt(MqttMessage { topic: topic.to_owned(), qos: q, retain: P::retained(&p) }),
                    device: None,
                    payload: payload.to_vec(),
                    metadata: Vec::new(),
                    received_at: now_ms(),
                };
                if s.send(topic, Uplink { route, raw, ack }).await.is_err() {
                    sink = None;
                }
            }
            Polled::Error(e) => {
                ctx.stats.connected.store(false, Ordering::Relaxed);
                connected = false;
                failures += 1;
                if failures == 1 {
                    tracing::warn!(connector = %name, "MQTT broker at {target}: {e}; reconnecting");
                } else {
                    tracing::debug!(connector = %name, "MQTT broker at {target}: {e} ({failures} failures in a row)");
                }
                // Requests that come meanwhile are answered at once (not
                // connected) rather than left waiting for the backoff.
                let pause = tokio::time::sleep(backoff);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = &mut pause => break,
                        _ = ctx.finish.cancelled() => break,
                        Some(job) = ctx.downlink.jobs.recv() => match job {
                            ToConnector::Device(job) => down.job(job, false),
                            ToConnector::ConnectorRpc { method, params, reply } => {
                                down.connector_rpc(&method, &params, reply, false)
                            }
                        },
                    }
                }
                if ctx.finish.is_cancelled() {
                    break;
                }
                down.expire();
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Polled::Disconnected | Polled::Other => {}
        }
    }

    // Finishing: the pipeline has confirmed what it will; send those acks
    // and the DISCONNECT, polling so they go out, for a short while at most.
    drop(sink);
    drop(ack_tx);
    drop(down);
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

/// Confirmations, numbered in receive order, released in that order: a
/// message's PUBACK waits for every earlier message's. A message never
/// confirmed (the gateway stopped first) holds the later ones back, and the
/// broker sends them all again: duplicates, never a PUBACK out of order.
struct InOrder<H> {
    next: u64,
    held: BTreeMap<u64, H>,
}

impl<H> Default for InOrder<H> {
    fn default() -> Self {
        InOrder { next: 0, held: BTreeMap::new() }
    }
}

impl<H> InOrder<H> {
    /// Message `n` is confirmed: the handles that may be acknowledged now,
    /// in order.
    fn done(&mut self, n: u64, handle: H) -> Vec<H> {
        self.held.insert(n, handle);
        let mut ready = Vec::new();
        while let Some(h) = self.held.remove(&self.next) {
            ready.push(h);
            self.next += 1;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_are_released_in_receive_order() {
        let mut o = InOrder::default();
        assert!(o.done(1, "b").is_empty(), "waits for 0");
        assert!(o.done(3, "d").is_empty());
        assert_eq!(o.done(0, "a"), vec!["a", "b"]);
        assert_eq!(o.done(2, "c"), vec!["c", "d"]);
        assert_eq!(o.done(4, "e"), vec!["e"]);
        assert!(o.held.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_rpcs_are_answered_oldest_first_or_expire() {
        let mut p = Pending::default();
        let (a, mut ra) = tokio::sync::oneshot::channel();
        let (b, mut rb) = tokio::sync::oneshot::channel();
        let (c, mut rc) = tokio::sync::oneshot::channel();
        assert!(p.add("t", Duration::from_secs(1), a).1, "a new topic: subscribe");
        assert!(!p.add("t", Duration::from_secs(5), b).1, "already subscribed");
        let (id_c, _) = p.add("u", Duration::from_secs(1), c);
        // The first answer on `t` is the oldest RPC's.
        let (reply, last) = p.take("t").expect("waiting");
        assert!(!last);
        reply.send(Ok(Vec::new())).unwrap();
        assert_eq!(ra.try_recv().unwrap(), Ok(Vec::new()));
        // A request that could not be sent stops waiting.
        let (reply, last) = p.cancel("u", id_c).expect("waiting");
        assert!(last, "nothing left on u: unsubscribe");
        drop(reply);
        assert!(rc.try_recv().is_err());
        // Past 1 s, only answered or cancelled RPCs had that deadline.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(p.expired().is_empty());
        tokio::time::advance(Duration::from_secs(4)).await;
        let expired = p.expired();
        assert_eq!(expired.len(), 1);
        assert_eq!((expired[0].0.as_str(), expired[0].2), ("t", true));
        assert!(rb.try_recv().is_err(), "not answered yet: the connector answers it with the error");
        assert!(p.deadlines.is_empty() && p.by_topic.is_empty());
    }

    fn request(topic: &str) -> MqttPublish {
        MqttPublish { topic: topic.into(), payload: Vec::new(), qos: 0, retain: false, response: None }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_wait_for_their_topics_suback_in_order() {
        let mut p = Pending::default();
        let (a, _ra) = tokio::sync::oneshot::channel();
        let (b, _rb) = tokio::sync::oneshot::channel();
        let (c, _rc) = tokio::sync::oneshot::channel();
        p.subscribes.push_back(Subscribe { mappings: true, topics: Vec::new() });
        let (id_a, _) = p.add("t", Duration::from_secs(10), a);
        p.subscribes.push_back(Subscribe { mappings: false, topics: vec!["t".into()] });
        p.hold("t", id_a, vec![request("req/a")]);
        assert!(p.awaiting_suback("t"));
        // A second RPC on `t` before its SUBACK waits too.
        let (id_b, new) = p.add("t", Duration::from_secs(10), b);
        assert!(!new);
        p.hold("t", id_b, vec![request("req/b")]);
        let (id_c, _) = p.add("u", Duration::from_secs(10), c);
        p.subscribes.push_back(Subscribe { mappings: false, topics: vec!["u".into()] });
        p.hold("u", id_c, vec![request("req/c")]);
        // The first SUBACK is the mappings': nothing released.
        let (mappings, released) = p.subscribed();
        assert!(mappings && released.is_empty());
        let (mappings, released) = p.subscribed();
        let topics: Vec<_> = released.iter().flat_map(|(_, _, ps)| ps.iter().map(|p| p.topic.as_str())).collect();
        assert!(!mappings);
        assert_eq!(topics, ["req/a", "req/b"]);
        assert!(!p.awaiting_suback("t") && p.awaiting_suback("u"));
        // An RPC that expires before its SUBACK never sends its request.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(p.expired().len(), 3);
        let (_, released) = p.subscribed();
        assert!(released.is_empty(), "{:?}", released.len());
        assert!(p.held.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn answered_topics_are_unsubscribed_together_later() {
        let mut p = Pending::default();
        let (a, _ra) = tokio::sync::oneshot::channel();
        let (b, _rb) = tokio::sync::oneshot::channel();
        let (c, _rc) = tokio::sync::oneshot::channel();
        p.add("t", Duration::from_secs(60), a);
        p.add("u", Duration::from_secs(60), b);
        assert!(p.take("t").expect("waiting").1);
        p.retire("t");
        assert!(p.take("u").expect("waiting").1);
        p.retire("u");
        assert!(p.due_unsubscribes().is_empty(), "not yet");
        // A new RPC on a retired topic is still subscribed: no SUBSCRIBE, and it stays.
        assert!(!p.add("u", Duration::from_secs(60), c).1);
        assert_eq!(p.next_deadline(), Some(tokio::time::Instant::now() + UNSUBSCRIBE_EVERY));
        tokio::time::advance(UNSUBSCRIBE_EVERY).await;
        assert_eq!(p.due_unsubscribes(), ["t"]);
        assert!(p.due_unsubscribes().is_empty() && p.unsubscribe_at.is_none());
    }
}
