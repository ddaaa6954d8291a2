//! What tbgw's tests need around it: real MQTT brokers (mosquitto, started on
//! a free loopback port and stopped with the test) and MQTT clients that
//! publish and collect messages, standing in for devices and for
//! ThingsBoard; a ThingsBoard that enforces its rate limits and a broker
//! that records acknowledgements ([`fake_mqtt`]); converter projects in
//! Rust, Python and JavaScript built as users build them
//! ([`converter_projects`]); a CAN bus (a socketcand hub) with python-can
//! on it as a device ([`socketcand`]); a fake BlueZ on a private D-Bus
//! ([`bluez`]).

pub mod asyncua;
pub mod bluez;
pub mod converter_projects;
pub mod fake_mqtt;
pub mod modbus;
pub mod opcua;
pub mod socketcand;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// A Python venv under `target/tmp/<name>` with `requirements` (pinned,
/// from PyPI) installed, made once; its `python`.
pub fn python_venv(name: &str, requirements: &[&str]) -> std::path::PathBuf {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tmp")).join(name);
    let python = dir.join(".venv/bin/python");
    if !dir.join("ready").exists() {
        std::fs::create_dir_all(&dir).expect("the venv's directory");
        converter_projects::run(
            std::process::Command::new("python3").args(["-m", "venv", ".venv"]).current_dir(&dir),
            "python3 -m venv (python3-venv)",
        );
        converter_projects::run(
            std::process::Command::new(dir.join(".venv/bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(requirements)
                .current_dir(&dir),
            &format!("pip install {}", requirements.join(" ")),
        );
        std::fs::write(dir.join("ready"), b"").expect("stamp");
    }
    python
}

/// A mosquitto broker on 127.0.0.1, stopped when dropped. It keeps its port
/// across [`Mosquitto::stop`] and [`Mosquitto::start`], so clients can
/// reconnect to it after an outage.
pub struct Mosquitto {
    pub port: u16,
    /// The TLS listener's port, when started with [`Mosquitto::start_tls`].
    pub tls_port: Option<u16>,
    tls: Option<TlsListener>,
    /// `user:password` pairs; anonymous clients are refused when set.
    users: Vec<(String, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A TLS listener's files.
#[derive(Clone)]
pub struct TlsListener {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require (and verify) client certificates.
    pub require_client_cert: bool,
}

impl Mosquitto {
    /// Start a broker on a free port. Panics with what to install when
    /// mosquitto is missing.
    pub fn start_new() -> Mosquitto {
        Self::with(None, Vec::new())
    }

    /// A broker with a plain listener and a TLS listener.
    pub fn start_tls(tls: TlsListener) -> Mosquitto {
        Self::with(Some(tls), Vec::new())
    }

    /// A broker that only lets `users` in (user name, password).
    pub fn start_with_users(users: &[(&str, &str)]) -> Mosquitto {
        Self::with(None, users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect())
    }

    fn with(tls: Option<TlsListener>, users: Vec<(String, String)>) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_port = tls.as_ref().map(|_| free_port());
        let mut m = Mosquitto { port: free_port(), tls_port, tls, users, dir, child: None };
        m.start();
        m
    }

    fn config(&self) -> PathBuf {
        let path = self.dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&path).expect("write mosquitto.conf");
        let data = self.dir.path().join("data");
        let _ = std::fs::create_dir_all(&data);
        // Generous queues: tests publish bursts to sessions that are away.
        // TCP settings are mosquitto's stock ones (Nagle on, as users run
        // it): latency measured through these brokers is what users see.
        writeln!(
            f,
            "{user}per_listener_settings true\npersistence true\npersistence_location {data}/\nautosave_interval 1\n\
             max_queued_messages 1000000\nmax_inflight_messages 0\nmessage_size_limit 0\n\
             log_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\n\
             listener {port} 127.0.0.1",
            port = self.port,
            data = data.display(),
            log = self.dir.path().join("mosquitto.log").display(),
            // Started as root, mosquitto would switch to its own user and
            // lose access to the test's files.
            user = if is_root() { "user root\n" } else { "" },
        )
        .expect("write mosquitto.conf");
        if self.users.is_empty() {
            writeln!(f, "allow_anonymous true").expect("write");
        } else {
            let passwords = self.dir.path().join("passwords");
            std::fs::write(&passwords, "").expect("write passwords");
            for (user, password) in &self.users {
                let status = Command::new("mosquitto_passwd")
                    .args(["-b"])
                    .arg(&passwords)
                    .args([user, password])
                    .status()
                    .expect("mosquitto_passwd (part of mosquitto)");
                assert!(status.success(), "mosquitto_passwd failed");
            }
            writeln!(f, "allow_anonymous false\npassword_file {}", passwords.display()).expect("write");
        }
        if let (Some(tls), Some(port)) = (&self.tls, self.tls_port) {
            writeln!(
                f,
                "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate {}\nuse_identity_as_username {}",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display(),
                tls.require_client_cert,
                tls.require_client_cert,
            )
            .expect("write");
        }
        path
    }

    /// (Re)start the broker on its port and wait until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let config = self.config();
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto ({e}): install it, e.g. `apt-get install mosquitto`"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports = [Some(self.port), self.tls_port];
        while ports.iter().flatten().any(|p| TcpStream::connect(("127.0.0.1", *p)).is_err()) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("mosquitto exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}: {}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the broker (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message a [`Collector`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The topic filter of the gateway's own RPCs, `getSessionLimits` among them.
pub const SESSION_LIMITS_REQUESTS: &str = "v1/devices/me/rpc/request/+";

/// An MQTT client that subscribes to topic filters and keeps everything it
/// receives; it can also publish. It runs on its own tokio runtime thread,
/// so tests can use it from plain threads.
pub struct Collector {
    client: rumqttc::AsyncClient,
    received: Arc<Mutex<Vec<Received>>>,
    /// Publishes made, and PUBACKs received: a publish is only done when the
    /// broker has it, or dropping the collector would lose what is queued.
    published: Arc<std::sync::atomic::AtomicU64>,
    acked: Arc<std::sync::atomic::AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    /// Connect to `port` as `client_id` and subscribe to `filters` (QoS 1).
    /// The session is persistent (clean session off), so nothing published
    /// while the collector is away (a broker restart) is missed.
    pub fn connect(port: u16, client_id: &str, filters: &[&str]) -> Collector {
        Self::connect_with(port, client_id, filters, |_| None)
    }

    /// Like [`Collector::connect`], and answer messages: `respond` may give a
    /// (topic, payload) to publish for each message received (to play
    /// ThingsBoard's part in a request/response).
    pub fn connect_with(
        port: u16,
        client_id: &str,
        filters: &[&str],
        respond: impl Fn(&Received) -> Option<(String, Vec<u8>)> + Send + 'static,
    ) -> Collector {
        Self::connect_full(port, client_id, filters, None, respond)
    }

    /// Like [`Collector::connect`], playing ThingsBoard's part in the
    /// gateway's `getSessionLimits` (answered with no limits, as a
    /// ThingsBoard without rate limits does): without it the gateway waits
    /// for the answer before its first delivery. Subscribe to
    /// [`SESSION_LIMITS_REQUESTS`] among `filters`.
    pub fn thingsboard(port: u16, client_id: &str, filters: &[&str]) -> Collector {
        Self::connect_with(port, client_id, filters, |m| {
            let id = m.topic.strip_prefix("v1/devices/me/rpc/request/")?;
            m.text().contains("getSessionLimits").then(|| {
                let answer =
                    r#"{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{},"gatewayRateLimits":{}}"#;
                (format!("v1/devices/me/rpc/response/{id}"), answer.as_bytes().to_vec())
            })
        })
    }

    /// Like [`Collector::connect`], with a user name and password.
    pub fn connect_basic(port: u16, client_id: &str, filters: &[&str], user: &str, password: &str) -> Collector {
        Self::connect_full(port, client_id, filters, Some((user, password)), |_| None)
    }

    fn connect_full(
        port: u16,
        client_id: &str,
        filters: &[&str],
        credentials: Option<(&str, &str)>,
        respond: impl Fn(&Received) -> Option<(String, Vec<u8>)> + Send + 'static,
    ) -> Collector {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(64 << 20, 64 << 20)
            .set_clean_session(false);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10_000);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acks = acked.clone();
        let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let responses = published.clone();
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let subscriber = client.clone();
        runtime.spawn(async move {
            let mut pending_subacks = 0usize;
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        pending_subacks = filters.len();
                        for f in &filters {
                            let _ = subscriber.subscribe(f.clone(), rumqttc::QoS::AtLeastOnce).await;
                        }
                        if filters.is_empty() {
                            let _ = subscribed_tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        pending_subacks = pending_subacks.saturating_sub(1);
                        if pending_subacks == 0 {
                            let _ = subscribed_tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let received = Received { topic: p.topic, payload: p.payload.to_vec() };
                        if let Some((topic, payload)) = respond(&received) {
                            responses.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = subscriber.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await;
                        }
                        sink.lock().unwrap().push(received);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        subscribed_rx.recv_timeout(Duration::from_secs(10)).expect("collector connected and subscribed");
        Collector { client, received, published, acked, _runtime: runtime }
    }

    /// Publish (QoS 1) and wait until the broker has it (PUBACK).
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish_many([(topic.to_owned(), payload.into())]);
    }

    /// Publish many messages (QoS 1), in order, and wait until the broker
    /// has them all (PUBACKs).
    pub fn publish_many(&self, messages: impl IntoIterator<Item = (String, Vec<u8>)>) {
        use std::sync::atomic::Ordering::SeqCst;
        let client = self.client.clone();
        let messages: Vec<_> = messages.into_iter().collect();
        self.published.fetch_add(messages.len() as u64, SeqCst);
        self._runtime.block_on(async move {
            for (topic, payload) in messages {
                client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked.load(SeqCst) < self.published.load(SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the broker acknowledged {} of {} publishes within 60 s",
                self.acked.load(SeqCst),
                self.published.load(SeqCst)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait until `done` holds for what was received, or panic after `timeout`.
    pub fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; received {} messages", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A certificate authority with a server certificate for 127.0.0.1 and a
/// client certificate, made with the `openssl` command.
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        std::fs::write(
            dir.path().join("server.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("client.cnf"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
            .expect("write");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tbgw test CA",
        ]);
        for (name, cn) in [("server", "localhost"), ("client", "tbgw-gateway")] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            let (csr, pem, ext) = (format!("{name}.csr"), format!("{name}.pem"), format!("{name}.cnf"));
            let args = [
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ];
            run(&args);
        }
        TestPki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The broker side: the CA, and the server's certificate and key.
    pub fn listener(&self, require_client_cert: bool) -> TlsListener {
        TlsListener {
            ca: self.path("ca.pem"),
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            require_client_cert,
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
