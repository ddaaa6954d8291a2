//! The probe as it was built against contract 0.1.0, unchanged but for
//! the path of its WIT: proof that a 0.1 component keeps loading and
//! converting under a 0.2 host.
//!
//! A test guest: a well-behaved uplink converter that misbehaves when a
//! message asks it to, so the host's defences can be tested against a real
//! component.
//!
//! Config: `{"tag": "A", "fail": false, "spin_in_create": false,
//! "connect": "127.0.0.1:PORT"}`.
//!
//! Payloads:
//! - `spin`: loop forever;  `hog`: allocate until memory runs out;
//! - `trap`: panic (a trap, with a message on stderr);
//! - `flood`: return a 10 MB value;  `chatty`: log 100,000 lines;
//! - `snoop`: try the filesystem, the environment and the network, and
//!   report what happened;  `fail`: a conversion error for this message;
//! - anything else: one update for device `<tag>` with the payload as the
//!   `payload` telemetry value, timestamped with the receipt time, and the
//!   number of calls this instance has served as the `calls` attribute.

// The uplink world plus an import tbgw does not provide, to test that such a
// component still loads and that calling the import traps.
wit_bindgen::generate!({
    inline: "
        package tbgw:probe;
        interface extra {
            hello: func() -> string;
        }
        world probe {
            include tbgw:converter/uplink-converter@0.1.0;
            import extra;
        }
    ",
    path: "../../../wit/0.1.0",
    world: "tbgw:probe/probe",
    generate_all,
});

use exports::tbgw::converter::uplink::{Converter, Guest, GuestConverter};
use std::cell::Cell;
use tbgw::converter::log::{Level, log};
use tbgw::converter::types::{
    ConfigError, ConvertError, DeviceUpdate, Entry, RawUplink, Telemetry, UplinkOutput, Value,
};

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = Probe;
}

struct Probe {
    tag: String,
    connect: Option<String>,
    calls: Cell<i64>,
}

impl GuestConverter for Probe {
    fn create(config: String) -> Result<Converter, ConfigError> {
        let cfg: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| ConfigError { field: None, message: format!("config is not JSON: {e}") })?;
        if cfg["fail"].as_bool() == Some(true) {
            return Err(ConfigError { field: Some("fail".into()), message: "asked to fail".into() });
        }
        if cfg["spin_in_create"].as_bool() == Some(true) {
            spin();
        }
        Ok(Converter::new(Probe {
            tag: cfg["tag"].as_str().unwrap_or("probe").to_owned(),
            connect: cfg["connect"].as_str().map(str::to_owned),
            calls: Cell::new(0),
        }))
    }

    fn convert(&self, batch: Vec<RawUplink>) -> Vec<Result<UplinkOutput, ConvertError>> {
        self.calls.set(self.calls.get() + 1);
        batch.iter().map(|msg| self.one(msg)).collect()
    }
}

impl Probe {
    fn one(&self, msg: &RawUplink) -> Result<UplinkOutput, ConvertError> {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let mut attributes = vec![Entry { key: "calls".into(), value: Value::Integer(self.calls.get()) }];
        let mut payload = Value::Text(text.clone());
        match text.as_str() {
            "spin" => spin(),
            "hog" => hog(),
            "trap" => panic!("probe: asked to trap"),
            "fail" => return Err(ConvertError { message: "probe: asked to fail".into() }),
            "extra" => payload = Value::Text(tbgw::probe::extra::hello()),
            "flood" => payload = Value::Text("x".repeat(10 * 1024 * 1024)),
            "chatty" => {
                for i in 0..100_000 {
                    log(Level::Info, &format!("chatty line {i}"));
                }
                eprintln!("chatty on stderr");
                println!("chatty on stdout");
            }
            "snoop" => attributes.extend(self.snoop()),
            busy if busy.starts_with("busy:") => {
                let ms: u64 = busy[5..].parse().unwrap_or(0);
                let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            _ => {}
        }
        Ok(UplinkOutput {
            updates: vec![DeviceUpdate {
                device: self.tag.clone(),
                device_type: None,
                attributes,
                telemetry: vec![Telemetry {
                    ts: Some(msg.received_at),
                    values: vec![Entry { key: "payload".into(), value: payload }],
                }],
            }],
            dropped: Vec::new(),
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
            Entry { key: "fs".into(), value: outcome(fs) },
            Entry { key: "file".into(), value: outcome(file) },
            Entry { key: "env".into(), value: outcome(env) },
            Entry { key: "net".into(), value: outcome(net) },
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
