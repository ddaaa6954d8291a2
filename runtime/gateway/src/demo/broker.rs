//! A small MQTT 3.1.1 broker on loopback, for `tbgw demo`: it stands in for
//! ThingsBoard and for the devices' broker when neither is at hand.
//!
//! It routes PUBLISH to matching subscriptions (`+` and `#` wildcards) and
//! answers CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and QoS 1/2 handshakes.
//! Deliberately not a production broker: no persistent sessions (every
//! CONNACK says no session), no retained messages, no authentication (any
//! credentials are accepted), no redelivery. A slow subscriber slows the
//! publishers (bounded queues) rather than losing messages.
//!
//! Packets are encoded and decoded with rumqttc's own MQTT 3.1.1 codec.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{QoS, matches, valid_filter};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest packet accepted or sent.
const MAX_PACKET: usize = 16 << 20;
/// Packets queued for one client before its publishers wait.
const QUEUE: usize = 4096;

/// A running broker; stops when dropped.
pub struct Broker {
    addr: SocketAddr,
    stop: CancellationToken,
    routes: Arc<Mutex<Routes>>,
}

impl Broker {
    /// Listen on `addr` (port 0: a free port) and serve until dropped.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Broker> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let routes = Arc::new(Mutex::new(Routes::default()));
        tokio::spawn(accept(listener, routes.clone(), stop.clone()));
        Ok(Broker { addr, stop, routes })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a message on `topic` would reach anyone now.
    pub fn has_subscriber(&self, topic: &str) -> bool {
        !lock(&self.routes).targets(topic).is_empty()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Who is connected and what they subscribed to.
#[derive(Default)]
struct Routes {
    next_id: u64,
    clients: HashMap<u64, Client>,
}

struct Client {
    client_id: String,
    out: mpsc::Sender<Packet>,
    filters: Vec<(String, QoS)>,
    /// Ends the connection (a newer one took the client id over).
    kick: CancellationToken,
}

impl Routes {
    /// Where a message on `topic` goes: each client once, at the highest
    /// QoS of its matching filters.
    fn targets(&self, topic: &str) -> Vec<(mpsc::Sender<Packet>, QoS)> {
        self.clients
            .values()
            .filter_map(|c| {
                let qos =
                    c.filters.iter().filter(|(f, _)| matches(topic, f)).map(|(_, q)| *q).max_by_key(|q| *q as u8)?;
                Some((c.out.clone(), qos))
            })
            .collect()
    }
}

async fn accept(listener: TcpListener, routes: Arc<Mutex<Routes>>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = stop.cancelled() => return,
        };
        match stream {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, routes.clone(), stop.child_token()));
            }
            Err(e) => {
                tracing::debug!("demo broker: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection: read packets and act on them; a writer task sends.
async fn serve(stream: TcpStream, routes: Arc<Mutex<Routes>>, stop: CancellationToken) {
    let (mut reader, mut writer) = stream.into_split();
    let (out, mut queue) = mpsc::channel::<Packet>(QUEUE);
    let write_task = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut next_pkid: u16 = 0;
        while let Some(mut packet) = queue.recv().await {
            if let Packet::Publish(p) = &mut packet
                && p.qos != QoS::AtMostOnce
            {
                next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                p.pkid = next_pkid;
            }
            buf.clear();
            if packet.write(&mut buf, MAX_PACKET).is_err() || writer.write_all(&buf).await.is_err() {
                return;
            }
        }
    });

    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut me: Option<u64> = None;
    let kick = CancellationToken::new();
    'conn: loop {
        // Every whole packet in the buffer, then read more.
        loop {
            let packet = match Packet::read(&mut buf, MAX_PACKET) {
                Ok(p) => p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => {
                    if me.is_none() {
                        // Most likely an MQTT 5 client: say which version we speak.
                        let nack = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false);
                        let _ = out.send(Packet::ConnAck(nack)).await;
                    }
                    tracing::debug!("demo broker: closing a connection: {e}");
                    break 'conn;
                }
            };
            let mut reply = None;
            match packet {
                Packet::Connect(c) if me.is_none() => {
                    let id = {
                        let mut r = lock(&routes);
                        // A client id is one connection: the newer one wins.
                        let old: Vec<u64> =
                            r.clients.iter().filter(|(_, x)| x.client_id == c.client_id).map(|(id, _)| *id).collect();
                        for id in old {
                            if let Some(x) = r.clients.remove(&id) {
                                x.kick.cancel();
                            }
                        }
                        r.next_id += 1;
                        let id = r.next_id;
                        r.clients.insert(
                            id,
                            Client {
                                client_id: c.client_id,
                                out: out.clone(),
                                filters: Vec::new(),
                                kick: kick.clone(),
                            },
                        );
                        id
                    };
                    me = Some(id);
                    if out.send(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))).await.is_err() {
                        break 'conn;
                    }
                }
                _ if me.is_none() => break 'conn,
                Packet::Connect(_) => break 'conn,
                Packet::Publish(p) => {
                    let ack = match p.qos {
                        QoS::AtMostOnce => None,
                        QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid))),
                        QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(p.pkid))),
                    };
                    let targets = lock(&routes).targets(&p.topic);
                    for (to, qos) in targets {
                        let qos = if (qos as u8) < (p.qos as u8) { qos } else { p.qos };
                        let mut copy = Publish::new(p.topic.clone(), qos, Vec::new());
                        copy.payload = p.payload.clone();
                        // A gone subscriber is not this publisher's problem.
                        let _ = to.send(Packet::Publish(copy)).await;
                    }
                    if let Some(ack) = ack
                        && out.send(ack).await.is_err()
                    {
                        break 'conn;
                    }
                }
                Packet::PubRel(rel) => reply = Some(Packet::PubComp(PubComp::new(rel.pkid))),
                Packet::Subscribe(s) => {
                    let codes = {
                        let mut r = lock(&routes);
                        let Some(client) = me.and_then(|id| r.clients.get_mut(&id)) else { break 'conn };
                        s.filters
                            .iter()
                            .map(|f| {
                                if !valid_filter(&f.path) {
                                    return SubscribeReasonCode::Failure;
                                }
                                client.filters.retain(|(x, _)| *x != f.path);
                                client.filters.push((f.path.clone(), f.qos));
                                SubscribeReasonCode::Success(f.qos)
                            })
                            .collect()
                    };
                    if out.send(Packet::SubAck(SubAck::new(s.pkid, codes))).await.is_err() {
                        break 'conn;
                    }
                }
                Packet::Unsubscribe(u) => {
                    {
                        let mut r = lock(&routes);
                        if let Some(client) = me.and_then(|id| r.clients.get_mut(&id)) {
                            client.filters.retain(|(f, _)| !u.topics.contains(f));
                        }
                    }
                    if out.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await.is_err() {
                        break 'conn;
                    }
                }
                Packet::PingReq => reply = Some(Packet::PingResp),
                Packet::Disconnect => break 'conn,
                // Acknowledgements of what we sent: nothing is redelivered.
                _ => {}
            }
            if let Some(r) = reply
                && out.send(r).await.is_err()
            {
                break 'conn;
            }
        }
        let read = tokio::select! {
            r = reader.read_buf(&mut buf) => r,
            _ = kick.cancelled() => break,
            _ = stop.cancelled() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if let Some(id) = me {
        lock(&routes).clients.remove(&id);
    }
    drop(out);
    // Let the queued packets (a refusal, acks) go out, then close.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write_task).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, MqttOptions};
    use std::time::Duration;

    async fn client(port: u16, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
        let opts = MqttOptions::new(id, "127.0.0.1", port);
        AsyncClient::new(opts, 100)
    }

    /// Publishes of `filter` received by a subscriber, as (topic, payload).
    async fn receive(mut el: rumqttc::EventLoop, n: usize) -> Vec<(String, String)> {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    got.push((p.topic, String::from_utf8_lossy(&p.payload).into_owned()))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber: {e}"),
                Err(_) => panic!("subscriber: timed out with {got:?}"),
            }
        }
        got
    }

    #[tokio::test]
    async fn routes_by_filter_with_wildcards_in_order() {
        let broker = Broker::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = broker.addr().port();
        let (sub, mut sub_loop) = client(port, "sub").await;
        sub.subscribe("sensor/+/data", QoS::AtLeastOnce).await.unwrap();
        sub.subscribe("v1/#", QoS::AtMostOnce).await.unwrap();
        // Wait for both SUBACKs before anyone publishes.
        let mut subacks = 0;
        while subacks < 2 {
            if let Event::Incoming(Packet::SubAck(a)) = sub_loop.poll().await.unwrap() {
                assert!(a.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))));
                subacks += 1;
            }
        }
        let (publisher, mut pub_loop) = client(port, "pub").await;
        tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
        for (i, topic) in ["sensor/a/data", "other/x", "sensor/b/data/extra", "v1/gateway/telemetry", "sensor/a/data"]
            .into_iter()
            .enumerate()
        {
            publisher.publish(topic, QoS::AtLeastOnce, false, format!("m{i}")).await.unwrap();
        }
        let got = receive(sub_loop, 3).await;
        assert_eq!(
            got,
            [
                ("sensor/a/data".to_owned(), "m0".to_owned()),
                ("v1/gateway/telemetry".to_owned(), "m3".to_owned()),
                ("sensor/a/data".to_owned(), "m4".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn refuses_mqtt_5_with_a_version_error() {
        let broker = Broker::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let opts = rumqttc::v5::MqttOptions::new("v5", "127.0.0.1", broker.addr().port());
        let (_c, mut el) = rumqttc::v5::AsyncClient::new(opts, 10);
        // rumqttc gives up on the refused handshake after its own 5 s
        // connection timeout: wait longer than that, or this races it.
        let err = tokio::time::timeout(Duration::from_secs(30), el.poll()).await.expect("an answer");
        assert!(err.is_err(), "an MQTT 5 client must not be served: {err:?}");
    }
}
