//! A test guest: a well-behaved uplink converter that misbehaves when a
//! message asks it to, so the host's defences can be tested against a real
//! component.
//!
//! Config: `{"tag": "A", "fail": false, "spin_in_create": false,
//! "connect": "127.0.0.1:PORT", "trap": false}`; `trap`: every message
//! traps (a broken version that loads fine).
//!
//! Payloads:
//! - `spin`: loop forever;  `hog`: allocate until memory runs out;
//! - `trap`: panic (a trap, with a message on stderr);
//! - `flood`: return a 10 MB value;  `chatty`: log 100,000 lines;
//! - `snoop`: try the filesystem, the environment and the network, and
//!   report what happened;  `fail`: a conversion error for this message;
//! - anything else: one update for device `<tag>` with the payload as the
//!   `payload` telemetry value, timestamped with the receipt time, and the
//!   number of messages this instance has converted as the `calls`
//!   attribute;  `busy:MS`: the same, after spinning MS milliseconds;
//!   `keep:MIB`: the same, after allocating MIB MiB that the instance
//!   keeps (a heap that creeps up).

// An import tbgw does not provide, to test that such a component still
// loads and that calling the import traps. Imports only: the export is the
// SDK's.
mod extra {
    wit_bindgen::generate!({
        inline: "
            package tbgw:probe;
            interface extra {
                hello: func() -> string;
            }
            world extra-import {
                import extra;
            }
        ",
        world: "tbgw:probe/extra-import",
    });
}

use std::cell::Cell;
use tbgw_converter_sdk::{
    self as sdk, ConfigError, ConvertedMessage, DeviceUpdate, Entry, Level, RawUplink, Telemetry, Value, log,
};

struct Probe {
    tag: String,
    connect: Option<String>,
    trap: bool,
    calls: Cell<i64>,
}

impl sdk::Uplink for Probe {
    fn create(config: &str) -> Result<Self, ConfigError> {
        let cfg: serde_json::Value =
            serde_json::from_str(config).map_err(|e| ConfigError::whole(format!("config is not JSON: {e}")))?;
        if cfg["fail"].as_bool() == Some(true) {
            return Err(ConfigError::at("fail", "asked to fail"));
        }
        if cfg["spin_in_create"].as_bool() == Some(true) {
            spin();
        }
        Ok(Probe {
            tag: cfg["tag"].as_str().unwrap_or("probe").to_owned(),
            connect: cfg["connect"].as_str().map(str::to_owned),
            trap: cfg["trap"].as_bool() == Some(true),
            calls: Cell::new(0),
        })
    }

    fn convert(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        self.calls.set(self.calls.get() + 1);
        if self.trap {
            panic!("probe: configured to trap");
        }
        self.one(msg)
    }
}

sdk::export_uplink!(Probe);

impl Probe {
    fn one(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let mut attributes = vec![Entry::new("calls", Value::Int(self.calls.get()))];
        let mut payload = Value::Text(text.clone());
        match text.as_str() {
            "spin" => spin(),
            "hog" => hog(),
            "trap" => panic!("probe: asked to trap"),
            "fail" => return Err("probe: asked to fail".into()),
            "extra" => payload = Value::Text(extra::tbgw::probe::extra::hello()),
            "flood" => payload = Value::Text("x".repeat(10 * 1024 * 1024)),
            "chatty" => {
                for i in 0..100_000 {
                    log(Level::Info, &format!("chatty line {i}"));
                }
                eprintln!("chatty on stderr");
                println!("chatty on stdout");
            }
            "snoop" => attributes.extend(self.snoop()),
            keep if keep.starts_with("keep:") => {
                let mib: usize = keep[5..].parse().unwrap_or(0);
                // Leaked on purpose: the instance holds it until it is dropped.
                std::hint::black_box(Box::leak(vec![1u8; mib << 20].into_boxed_slice()));
            }
            busy if busy.starts_with("busy:") => {
                let ms: u64 = busy[5..].parse().unwrap_or(0);
                let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            _ => {}
        }
        Ok(ConvertedMessage {
            updates: vec![DeviceUpdate {
                device: self.tag.clone(),
                device_type: None,
                attributes,
                telemetry: vec![Telemetry { ts: Some(msg.received_at), values: vec![Entry::new("payload", payload)] }],
            }],
            ..ConvertedMessage::default()
        })
    }

    /// Try every capability a converter must not have; report each outcome.
    fn snoop(&self) -> Vec<Entry> {
        let outcome = |r: Result<String, String>| match r {
            Ok(s) => Value::Text(format!("allowed: {s}")),
            Err(e) => Value::Text(format!("denied: {e}")),
        };
        let fs = std::fs::read_dir("/").map(|d| format!("{} entries", d.count())).map_err(|e| e.to_string());
        let file = std::fs::read("/etc/passwd").map(|b| format!("{} bytes", b.len())).map_err(|e| e.to_string());
        let env = std::env::vars().count();
        let env = if env == 0 { Err("no variables".to_owned()) } else { Ok(format!("{env} variables")) };
        let net = match &self.connect {
            Some(addr) => std::net::TcpStream::connect(addr.as_str())
                .map(|_| format!("connected to {addr}"))
                .map_err(|e| e.to_string()),
            None => Err("no address configured".to_owned()),
        };
        vec![
            Entry::new("fs", outcome(fs)),
            Entry::new("file", outcome(file)),
            Entry::new("env", outcome(env)),
            Entry::new("net", outcome(net)),
        ]
    }
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn hog() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}
