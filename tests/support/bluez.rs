//! A fake BlueZ for the BLE tests: a private `dbus-daemon` (Debian's
//! `dbus`) with a system-bus config that lets anyone in, and an `org.bluez`
//! service on it serving BlueZ's D-Bus interfaces (ObjectManager,
//! Properties, Introspectable, `Adapter1`, `Device1`, `GattService1`,
//! `GattCharacteristic1`) over the real `dbus` crate, as btleplug (through
//! bluez-async) calls them. These machines have no Bluetooth; btleplug is
//! pointed at the fake by `DBUS_SYSTEM_BUS_ADDRESS` ([`FakeBluez::address`]).
//!
//! The test drives it: devices added and removed, advertisement data
//! changed (as `PropertiesChanged`, the way BlueZ reports it), values
//! notified, links dropped, reads failed, connections refused; and it
//! shows what the gateway did (writes, connections, subscriptions).

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::blocking::SyncConnection;
use dbus::channel::{MatchingReceiver, Sender};
use dbus::message::MatchRule;
use dbus::strings::{ErrorName, Path as ObjPath};
use dbus::{Message, MessageType};
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ADAPTER: &str = "/org/bluez/hci0";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
const DEVICE: &str = "org.bluez.Device1";
const SERVICE: &str = "org.bluez.GattService1";
const CHARACTERISTIC: &str = "org.bluez.GattCharacteristic1";

/// A property value, kept plain so that the state is `Send` and cloneable.
#[derive(Debug, Clone, PartialEq)]
enum Prop {
    Str(String),
    Bool(bool),
    I16(i16),
    Bytes(Vec<u8>),
    Strs(Vec<String>),
    Path(String),
    Manufacturer(Vec<(u16, Vec<u8>)>),
    ServiceData(Vec<(String, Vec<u8>)>),
}

impl Prop {
    fn variant(&self) -> Variant<Box<dyn RefArg>> {
        let bytes = |b: &Vec<u8>| Variant(Box::new(b.clone()) as Box<dyn RefArg>);
        Variant(match self {
            Prop::Str(s) => Box::new(s.clone()),
            Prop::Bool(b) => Box::new(*b),
            Prop::I16(n) => Box::new(*n),
            Prop::Bytes(b) => Box::new(b.clone()),
            Prop::Strs(s) => Box::new(s.clone()),
            Prop::Path(p) => Box::new(ObjPath::from(p.clone())),
            Prop::Manufacturer(m) => {
                Box::new(m.iter().map(|(k, v)| (*k, bytes(v))).collect::<HashMap<u16, Variant<Box<dyn RefArg>>>>())
            }
            Prop::ServiceData(m) => {
                Box::new(m.iter().map(|(k, v)| (k.clone(), bytes(v))).collect::<HashMap<String, _>>())
            }
        })
    }
}

type Ifaces = BTreeMap<String, BTreeMap<String, Prop>>;

/// A characteristic of a fake device.
#[derive(Debug, Clone)]
pub struct FakeChar {
    pub uuid: String,
    /// BlueZ's flags: `read`, `write`, `write-without-response`, `notify`.
    pub flags: Vec<&'static str>,
    pub value: Vec<u8>,
}

/// A fake device: what it advertises, and its GATT services.
#[derive(Debug, Clone, Default)]
pub struct FakeDevice {
    /// `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub tx_power: Option<i16>,
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    pub service_data: Vec<(String, Vec<u8>)>,
    /// (service UUID, its characteristics).
    pub services: Vec<(String, Vec<FakeChar>)>,
}

/// What the gateway did to a device.
#[derive(Debug, Clone, Default)]
struct Record {
    connects: u32,
    /// Characteristic UUID → each value written, with whether a response was asked.
    writes: BTreeMap<String, Vec<(Vec<u8>, bool)>>,
    reads: BTreeMap<String, u32>,
    refuse_connect: bool,
    failing_reads: Vec<String>,
    silent_reads: Vec<String>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Ifaces>,
    /// Device path → its record.
    records: BTreeMap<String, Record>,
}

/// The fake BlueZ and its bus; both stop when it is dropped.
pub struct FakeBluez {
    address: String,
    daemon: Child,
    conn: Arc<SyncConnection>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn device_path(address: &str) -> String {
    format!("{ADAPTER}/dev_{}", address.to_ascii_uppercase().replace(':', "_"))
}

fn props(list: &[(&str, Prop)]) -> BTreeMap<String, Prop> {
    list.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn prop_map(props: &BTreeMap<String, Prop>) -> PropMap {
    props.iter().map(|(k, v)| (k.clone(), v.variant())).collect()
}

fn iface_map(ifaces: &Ifaces) -> HashMap<String, PropMap> {
    ifaces.iter().map(|(i, p)| (i.clone(), prop_map(p))).collect()
}

impl FakeBluez {
    /// A private bus with BlueZ's adapter `hci0` on it, powered.
    pub fn start() -> FakeBluez {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("system_bus_socket");
        let address = format!("unix:path={}", socket.display());
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>system</type><listen>{address}</listen><auth>EXTERNAL</auth>\n\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
                 <allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/></policy></busconfig>\n"
            ),
        )
        .expect("bus config");
        let daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            // It warns that it cannot raise its fd limit unprivileged.
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon (apt install dbus)");
        let until = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < until, "dbus-daemon made no socket at {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut channel = dbus::channel::Channel::open_private(&address).expect("connect to the private bus");
        channel.register().expect("register on the bus");
        let conn = Arc::new(SyncConnection::from(channel));
        conn.request_name("org.bluez", false, true, false).expect("own org.bluez");

        let mut state = State::default();
        state.objects.insert(
            ADAPTER.to_owned(),
            BTreeMap::from([(
                "org.bluez.Adapter1".to_owned(),
                props(&[
                    ("Address", Prop::Str("00:11:22:33:44:55".into())),
                    ("AddressType", Prop::Str("public".into())),
                    ("Name", Prop::Str("fake".into())),
                    ("Alias", Prop::Str("fake".into())),
                    ("Modalias", Prop::Str("usb:v1D6Bp0246d0540".into())),
                    ("Powered", Prop::Bool(true)),
                    ("Discovering", Prop::Bool(false)),
                    ("Discoverable", Prop::Bool(false)),
                    ("Pairable", Prop::Bool(false)),
                    ("UUIDs", Prop::Strs(Vec::new())),
                ]),
            )]),
        );
        let state = Arc::new(Mutex::new(state));
        let handler_state = state.clone();
        conn.start_receive(
            MatchRule::new_method_call(),
            Box::new(move |msg, conn| {
                // A call left unanswered is a device that never answers.
                if let Some(reply) = handle(&handler_state, conn, &msg) {
                    let _ = conn.send(reply);
                }
                true
            }),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (conn, stop) = (conn.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if conn.process(Duration::from_millis(50)).is_err() {
                        break;
                    }
                }
            })
        };
        FakeBluez { address, daemon, conn, state, stop, thread: Some(thread), _dir: dir }
    }

    /// The bus daemon's process id (a bench reports its CPU apart).
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.id()
    }

    /// The bus, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signal(&self, msg: Message) {
        let _ = self.conn.send(msg);
    }

    fn changed(&self, path: &str, iface: &str, changes: &[(&str, Prop)]) {
        {
            let mut s = self.lock();
            let Some(props) = s.objects.get_mut(path).and_then(|o| o.get_mut(iface)) else { return };
            for (k, v) in changes {
                props.insert((*k).to_owned(), v.clone());
            }
        }
        self.signal(properties_changed(path, iface, &props(changes)));
    }

    /// A device comes in range: its objects, announced with `InterfacesAdded`.
    pub fn add_device(&self, d: &FakeDevice) {
        let path = device_path(&d.address);
        let mut device = props(&[
            ("Address", Prop::Str(d.address.to_ascii_uppercase())),
            ("AddressType", Prop::Str("public".into())),
            ("Adapter", Prop::Path(ADAPTER.into())),
            ("Paired", Prop::Bool(false)),
            ("Connected", Prop::Bool(false)),
            ("ServicesResolved", Prop::Bool(false)),
            ("Trusted", Prop::Bool(false)),
            ("Blocked", Prop::Bool(false)),
            ("LegacyPairing", Prop::Bool(false)),
            ("UUIDs", Prop::Strs(d.services.iter().map(|(u, _)| u.clone()).collect())),
            ("ManufacturerData", Prop::Manufacturer(d.manufacturer_data.clone())),
            ("ServiceData", Prop::ServiceData(d.service_data.clone())),
        ]);
        if let Some(n) = &d.name {
            device.insert("Name".into(), Prop::Str(n.clone()));
            device.insert("Alias".into(), Prop::Str(n.clone()));
        }
        if let Some(r) = d.rssi {
            device.insert("RSSI".into(), Prop::I16(r));
        }
        if let Some(t) = d.tx_power {
            device.insert("TxPower".into(), Prop::I16(t));
        }
        let mut added = vec![(path.clone(), BTreeMap::from([(DEVICE.to_owned(), device)]))];
        let mut handle = 1;
        for (uuid, chars) in &d.services {
            let spath = format!("{path}/service{handle:04x}");
            handle += 1;
            let service = props(&[
                ("UUID", Prop::Str(uuid.clone())),
                ("Primary", Prop::Bool(true)),
                ("Device", Prop::Path(path.clone())),
            ]);
            added.push((spath.clone(), BTreeMap::from([(SERVICE.to_owned(), service)])));
            for c in chars {
                let cpath = format!("{spath}/char{handle:04x}");
                handle += 1;
                let characteristic = props(&[
                    ("UUID", Prop::Str(c.uuid.clone())),
                    ("Service", Prop::Path(spath.clone())),
                    ("Flags", Prop::Strs(c.flags.iter().map(|f| (*f).to_owned()).collect())),
                    ("Value", Prop::Bytes(c.value.clone())),
                    ("Notifying", Prop::Bool(false)),
                ]);
                added.push((cpath, BTreeMap::from([(CHARACTERISTIC.to_owned(), characteristic)])));
            }
        }
        {
            let mut s = self.lock();
            s.records.entry(path.clone()).or_default();
            for (p, ifaces) in &added {
                s.objects.insert(p.clone(), ifaces.clone());
            }
        }
        for (p, ifaces) in added {
            let msg = Message::new_signal("/", OBJECT_MANAGER, "InterfacesAdded")
                .expect("signal")
                .append2(ObjPath::from(p), iface_map(&ifaces));
            self.signal(msg);
        }
    }

    /// A device goes away: its objects, with `InterfacesRemoved`.
    pub fn remove_device(&self, address: &str) {
        let path = device_path(address);
        let removed: Vec<(String, Vec<String>)> = {
            let mut s = self.lock();
            let paths: Vec<String> =
                s.objects.keys().filter(|p| **p == path || p.starts_with(&format!("{path}/"))).cloned().collect();
            paths
                .into_iter()
                .rev()
                .filter_map(|p| s.objects.remove(&p).map(|o| (p, o.keys().cloned().collect())))
                .collect()
        };
        for (p, ifaces) in removed {
            let msg = Message::new_signal("/", OBJECT_MANAGER, "InterfacesRemoved")
                .expect("signal")
                .append2(ObjPath::from(p), ifaces);
            self.signal(msg);
        }
    }

    /// New manufacturer data, as a new advertisement reports it.
    pub fn set_manufacturer_data(&self, address: &str, data: Vec<(u16, Vec<u8>)>) {
        self.changed(&device_path(address), DEVICE, &[("ManufacturerData", Prop::Manufacturer(data))]);
    }

    pub fn set_service_data(&self, address: &str, data: Vec<(String, Vec<u8>)>) {
        self.changed(&device_path(address), DEVICE, &[("ServiceData", Prop::ServiceData(data))]);
    }

    pub fn set_rssi(&self, address: &str, rssi: i16) {
        self.changed(&device_path(address), DEVICE, &[("RSSI", Prop::I16(rssi))]);
    }

    fn char_path(&self, address: &str, uuid: &str) -> String {
        let prefix = format!("{}/", device_path(address));
        let s = self.lock();
        s.objects
            .iter()
            .find(|(p, o)| {
                p.starts_with(&prefix)
                    && o.get(CHARACTERISTIC).and_then(|c| c.get("UUID")) == Some(&Prop::Str(uuid.to_owned()))
            })
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| panic!("{address} has no characteristic {uuid}"))
    }

    /// The value a read returns from now on.
    pub fn set_value(&self, address: &str, uuid: &str, value: &[u8]) {
        let path = self.char_path(address, uuid);
        let mut s = self.lock();
        if let Some(c) = s.objects.get_mut(&path).and_then(|o| o.get_mut(CHARACTERISTIC)) {
            c.insert("Value".into(), Prop::Bytes(value.to_vec()));
        }
    }

    /// Notify a value, if the gateway subscribed; whether it had.
    pub fn notify(&self, address: &str, uuid: &str, value: &[u8]) -> bool {
        let path = self.char_path(address, uuid);
        if !self.is_notifying(address, uuid) {
            return false;
        }
        self.changed(&path, CHARACTERISTIC, &[("Value", Prop::Bytes(value.to_vec()))]);
        true
    }

    pub fn is_notifying(&self, address: &str, uuid: &str) -> bool {
        let path = self.char_path(address, uuid);
        let s = self.lock();
        s.objects.get(&path).and_then(|o| o.get(CHARACTERISTIC)).and_then(|c| c.get("Notifying"))
            == Some(&Prop::Bool(true))
    }

    /// The link drops (the device went out of range for a moment).
    pub fn drop_link(&self, address: &str) {
        let path = device_path(address);
        let chars: Vec<String> = {
            let s = self.lock();
            s.objects
                .iter()
                .filter(|(p, o)| p.starts_with(&format!("{path}/")) && o.contains_key(CHARACTERISTIC))
                .map(|(p, _)| p.clone())
                .collect()
        };
        for c in chars {
            self.changed(&c, CHARACTERISTIC, &[("Notifying", Prop::Bool(false))]);
        }
        self.changed(&path, DEVICE, &[("ServicesResolved", Prop::Bool(false)), ("Connected", Prop::Bool(false))]);
    }

    /// Refuse (or accept again) connections: the device is out of range.
    pub fn refuse_connect(&self, address: &str, refuse: bool) {
        let mut s = self.lock();
        s.records.entry(device_path(address)).or_default().refuse_connect = refuse;
    }

    /// Fail reads of a characteristic (or stop failing them).
    pub fn fail_reads(&self, address: &str, uuid: &str, fail: bool) {
        let mut s = self.lock();
        let r = s.records.entry(device_path(address)).or_default();
        r.failing_reads.retain(|u| u != uuid);
        if fail {
            r.failing_reads.push(uuid.to_owned());
        }
    }

    /// Leave reads of a characteristic unanswered (or answer them again).
    pub fn hang_reads(&self, address: &str, uuid: &str, hang: bool) {
        let mut s = self.lock();
        let r = s.records.entry(device_path(address)).or_default();
        r.silent_reads.retain(|u| u != uuid);
        if hang {
            r.silent_reads.push(uuid.to_owned());
        }
    }

    /// Connections made to the device.
    pub fn connects(&self, address: &str) -> u32 {
        self.lock().records.get(&device_path(address)).map_or(0, |r| r.connects)
    }

    pub fn is_connected(&self, address: &str) -> bool {
        let s = self.lock();
        s.objects.get(&device_path(address)).and_then(|o| o.get(DEVICE)).and_then(|d| d.get("Connected"))
            == Some(&Prop::Bool(true))
    }

    /// Reads of a characteristic.
    pub fn reads(&self, address: &str, uuid: &str) -> u32 {
        self.lock().records.get(&device_path(address)).and_then(|r| r.reads.get(uuid).copied()).unwrap_or(0)
    }

    /// The values written to a characteristic, each with whether a
    /// response was asked.
    pub fn writes(&self, address: &str, uuid: &str) -> Vec<(Vec<u8>, bool)> {
        self.lock().records.get(&device_path(address)).and_then(|r| r.writes.get(uuid).cloned()).unwrap_or_default()
    }

    /// Wait until `done`, or panic saying `what` was not seen.
    pub fn wait(&self, timeout: Duration, what: &str, done: impl Fn(&FakeBluez) -> bool) {
        let until = Instant::now() + timeout;
        while !done(self) {
            assert!(Instant::now() < until, "the fake BlueZ did not see {what} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn properties_changed(path: &str, iface: &str, changed: &BTreeMap<String, Prop>) -> Message {
    Message::new_signal(path.to_owned(), PROPERTIES, "PropertiesChanged").expect("signal").append3(
        iface,
        prop_map(changed),
        Vec::<String>::new(),
    )
}

fn error(msg: &Message, name: &str, text: &str) -> Message {
    let text = CString::new(text).unwrap_or_default();
    msg.error(&ErrorName::from(name.to_owned()), &text)
}

/// Answer one method call (`None`: leave it unanswered).
fn handle(state: &Mutex<State>, conn: &SyncConnection, msg: &Message) -> Option<Message> {
    if msg.msg_type() != MessageType::MethodCall {
        return Some(error(msg, "org.freedesktop.DBus.Error.NotSupported", "not a method call"));
    }
    let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
    let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    if iface == CHARACTERISTIC {
        return characteristic(&mut s, conn, msg, &path, &member);
    }
    Some(match (iface.as_str(), member.as_str()) {
        ("org.freedesktop.DBus.Introspectable", "Introspect") => msg.method_return().append1(introspect(&s, &path)),
        (OBJECT_MANAGER, "GetManagedObjects") => {
            let all: HashMap<ObjPath, HashMap<String, PropMap>> =
                s.objects.iter().map(|(p, o)| (ObjPath::from(p.clone()), iface_map(o))).collect();
            msg.method_return().append1(all)
        }
        (PROPERTIES, "GetAll") => {
            let Ok(wanted) = msg.read1::<&str>() else {
                return Some(error(msg, "org.freedesktop.DBus.Error.InvalidArgs", ""));
            };
            match s.objects.get(&path).and_then(|o| o.get(wanted)) {
                Some(p) => msg.method_return().append1(prop_map(p)),
                None => error(msg, "org.freedesktop.DBus.Error.UnknownInterface", wanted),
            }
        }
        (PROPERTIES, "Get") => {
            let Ok((wanted, name)) = msg.read2::<&str, &str>() else {
                return Some(error(msg, "org.freedesktop.DBus.Error.InvalidArgs", ""));
            };
            match s.objects.get(&path).and_then(|o| o.get(wanted)).and_then(|p| p.get(name)) {
                Some(p) => msg.method_return().append1(p.variant()),
                None => error(msg, "org.freedesktop.DBus.Error.UnknownProperty", name),
            }
        }
        (PROPERTIES, "Set") => msg.method_return(),
        ("org.bluez.Adapter1", "SetDiscoveryFilter") => msg.method_return(),
        ("org.bluez.Adapter1", m @ ("StartDiscovery" | "StopDiscovery")) => {
            let on = m == "StartDiscovery";
            if let Some(a) = s.objects.get_mut(&path).and_then(|o| o.get_mut("org.bluez.Adapter1")) {
                a.insert("Discovering".into(), Prop::Bool(on));
            }
            let _ =
                conn.send(properties_changed(&path, "org.bluez.Adapter1", &props(&[("Discovering", Prop::Bool(on))])));
            msg.method_return()
        }
        (DEVICE, "Connect") => {
            let record = s.records.entry(path.clone()).or_default();
            if record.refuse_connect {
                return Some(error(msg, "org.bluez.Error.Failed", "le-connection-abort-by-local"));
            }
            record.connects += 1;
            let Some(d) = s.objects.get_mut(&path).and_then(|o| o.get_mut(DEVICE)) else {
                return Some(error(msg, "org.freedesktop.DBus.Error.UnknownObject", &path));
            };
            d.insert("Connected".into(), Prop::Bool(true));
            d.insert("ServicesResolved".into(), Prop::Bool(true));
            let _ = conn.send(properties_changed(&path, DEVICE, &props(&[("Connected", Prop::Bool(true))])));
            let _ = conn.send(properties_changed(&path, DEVICE, &props(&[("ServicesResolved", Prop::Bool(true))])));
            msg.method_return()
        }
        (DEVICE, "Disconnect") => {
            if let Some(d) = s.objects.get_mut(&path).and_then(|o| o.get_mut(DEVICE)) {
                d.insert("Connected".into(), Prop::Bool(false));
                d.insert("ServicesResolved".into(), Prop::Bool(false));
            }
            let changed = props(&[("ServicesResolved", Prop::Bool(false)), ("Connected", Prop::Bool(false))]);
            let _ = conn.send(properties_changed(&path, DEVICE, &changed));
            msg.method_return()
        }
        _ => error(msg, "org.freedesktop.DBus.Error.UnknownMethod", &format!("{iface}.{member} on {path}")),
    })
}

fn characteristic(s: &mut State, conn: &SyncConnection, msg: &Message, path: &str, member: &str) -> Option<Message> {
    let device = path.rsplitn(3, '/').nth(2).unwrap_or_default().to_owned();
    let connected =
        s.objects.get(&device).and_then(|o| o.get(DEVICE)).and_then(|d| d.get("Connected")) == Some(&Prop::Bool(true));
    let Some(c) = s.objects.get_mut(path).and_then(|o| o.get_mut(CHARACTERISTIC)) else {
        return Some(error(msg, "org.freedesktop.DBus.Error.UnknownObject", path));
    };
    if !connected {
        return Some(error(msg, "org.bluez.Error.Failed", "Not connected"));
    }
    let uuid = match c.get("UUID") {
        Some(Prop::Str(u)) => u.clone(),
        _ => String::new(),
    };
    let record = s.records.entry(device).or_default();
    Some(match member {
        "ReadValue" => {
            *record.reads.entry(uuid.clone()).or_default() += 1;
            if record.silent_reads.contains(&uuid) {
                return None;
            }
            if record.failing_reads.contains(&uuid) {
                return Some(error(msg, "org.bluez.Error.Failed", "Operation failed with ATT error: 0x0e"));
            }
            let value = match s.objects.get(path).and_then(|o| o.get(CHARACTERISTIC)).and_then(|c| c.get("Value")) {
                Some(Prop::Bytes(b)) => b.clone(),
                _ => Vec::new(),
            };
            msg.method_return().append1(value)
        }
        "WriteValue" => {
            let Ok((value, options)) = msg.read2::<Vec<u8>, PropMap>() else {
                return Some(error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "WriteValue(ay, a{sv})"));
            };
            let kind = options.get("type").and_then(|v| v.0.as_str().map(str::to_owned));
            let with_response = kind.as_deref() != Some("command");
            record.writes.entry(uuid).or_default().push((value.clone(), with_response));
            if let Some(c) = s.objects.get_mut(path).and_then(|o| o.get_mut(CHARACTERISTIC)) {
                c.insert("Value".into(), Prop::Bytes(value));
            }
            msg.method_return()
        }
        "StartNotify" | "StopNotify" => {
            let on = member == "StartNotify";
            if let Some(c) = s.objects.get_mut(path).and_then(|o| o.get_mut(CHARACTERISTIC)) {
                c.insert("Notifying".into(), Prop::Bool(on));
            }
            let _ = conn.send(properties_changed(path, CHARACTERISTIC, &props(&[("Notifying", Prop::Bool(on))])));
            msg.method_return()
        }
        other => error(msg, "org.freedesktop.DBus.Error.UnknownMethod", other),
    })
}

/// Introspection XML naming the object's interfaces and its direct children
/// (bluez-async finds services and characteristics by their node names).
fn introspect(s: &State, path: &str) -> String {
    let prefix = if path == "/" { "/".to_owned() } else { format!("{path}/") };
    let mut children: Vec<&str> = s
        .objects
        .keys()
        .filter_map(|p| p.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('/').next())
        .filter(|c| !c.is_empty())
        .collect();
    children.dedup();
    let mut xml = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\" \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>",
    );
    xml.push_str("<interface name=\"org.freedesktop.DBus.Introspectable\"/>");
    if let Some(o) = s.objects.get(path) {
        for i in o.keys() {
            xml.push_str(&format!("<interface name=\"{i}\"/>"));
        }
    }
    for c in children {
        xml.push_str(&format!("<node name=\"{c}\"/>"));
    }
    xml.push_str("</node>");
    xml
}
