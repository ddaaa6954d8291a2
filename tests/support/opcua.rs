//! An OPC-UA server for tests and benches: async-opcua's own server side,
//! in process, on 127.0.0.1 (port 0, or a given port to come back on after
//! a restart), on a runtime thread of its own.
//!
//! Its address space is a plant: `Objects/Plant/Boiler <n>` folders (names
//! with a space), each with `SerialNumber` (`SN-<n>`), `Temperature`,
//! `Füllstand` (a non-ASCII name) and `V0`..`V<k>` doubles, all in the
//! namespace [`NAMESPACE`]; `extra_namespaces` registers namespaces before
//! it, so that its index moves between two servers. Values are set by the
//! test ([`OpcuaServer::set`], [`OpcuaServer::tick`]) with a source time;
//! a device can be added while clients are connected
//! ([`OpcuaServer::add_device`]); the server's operation limits can be
//! lowered ([`Plant::nodes_per_call`], [`Plant::monitored_items_per_call`]).
//!
//! For writes and calls each device also has writable `SetPoint` (Int16),
//! `Relay` (Boolean), `Label` (String) and `Curve` (an array of Doubles),
//! read back with [`OpcuaServer::value`], and methods: `multiply(Int32 a,
//! Int32 b) -> Int32`, `minmax(Double a, Double b) -> (Double, Double)`
//! and `fail()`, which the server answers `BadInvalidState`.
//!
//! [`OpcuaServer::start_secure`] has, in place of its one unsecured
//! endpoint, endpoints of every policy tbgw offers (Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss), each
//! signed and signed-and-encrypted, with a certificate of its own (made
//! for the server, [`OpcuaServer::certificate`]) and a user who logs in
//! with an X.509 certificate ([`client_certificate`] makes one).

use opcua::crypto::{CertificateStore, SecurityPolicy, X509Data};
use opcua::server::address_space::{AccessLevel, MethodBuilder, Variable};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken};
use opcua::types::{
    DataEncoding, DataTypeId, DataValue, DateTime, MessageSecurityMode, NodeId, NumericRange, ObjectId, QualifiedName,
    StatusCode, TimestampsToReturn, UAString, Variant,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The values tests set and read back.
pub use opcua::types::Variant as Value;

/// The plant's namespace URI.
pub const NAMESPACE: &str = "urn:tbgw:test:plant";
/// The user the server accepts besides anonymous ones.
pub const USER: (&str, &str) = ("operator", "s3cret");
/// The policies of a secure server's endpoints.
pub const POLICIES: [SecurityPolicy; 3] =
    [SecurityPolicy::Basic256Sha256, SecurityPolicy::Aes128Sha256RsaOaep, SecurityPolicy::Aes256Sha256RsaPss];

/// A certificate and its private key for an OPC-UA application (`uri` the
/// first subjectAltName, then `localhost` and `127.0.0.1`), in `dir`:
/// `(<name>.der, <name>.pem)`.
pub fn client_certificate(dir: &Path, name: &str, uri: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.der")), dir.join(format!("{name}.pem")));
    let mut data = X509Data {
        key_size: 2048,
        common_name: name.to_owned(),
        organization: "tbgw tests".into(),
        organizational_unit: "tbgw tests".into(),
        country: "DE".into(),
        state: "Berlin".into(),
        alt_host_names: Default::default(),
        certificate_duration_days: 30,
    };
    data.alt_host_names.add_uri(uri);
    data.alt_host_names.add_dns("localhost");
    data.alt_host_names.add_address("127.0.0.1");
    CertificateStore::create_certificate_and_key(&data, true, &cert, &key).expect("a certificate and its key");
    (cert, key)
}

/// What the server holds.
#[derive(Debug, Clone, Copy)]
pub struct Plant {
    pub devices: usize,
    /// `V0`.. variables per device (besides the named ones).
    pub variables: usize,
    /// The server's cap of monitored items per subscription.
    pub items_per_subscription: usize,
    /// Namespaces registered before the plant's (moving its index).
    pub extra_namespaces: usize,
    /// The server's MaxNodesPerRead and MaxNodesPerTranslateBrowsePathsToNodeIds
    /// (0: async-opcua's defaults); a larger request is refused.
    pub nodes_per_call: usize,
    /// The server's MaxMonitoredItemsPerCall (0: async-opcua's default).
    pub monitored_items_per_call: usize,
}

impl Default for Plant {
    fn default() -> Self {
        Plant {
            devices: 2,
            variables: 2,
            items_per_subscription: 1000,
            extra_namespaces: 0,
            nodes_per_call: 0,
            monitored_items_per_call: 0,
        }
    }
}

/// A running server.
pub struct OpcuaServer {
    pub port: u16,
    pub plant: Plant,
    /// The plant's namespace index.
    pub ns: u16,
    handle: ServerHandle,
    manager: Arc<SimpleNodeManager>,
    thread: Option<std::thread::JoinHandle<()>>,
    pki: PathBuf,
}

/// The name of device `d` (from 1).
pub fn device_name(d: usize) -> String {
    format!("Boiler {d}")
}

/// The NodeId (string id) of `variable` of device `d`.
pub fn node(ns: u16, d: usize, variable: &str) -> NodeId {
    NodeId::new(ns, format!("{}.{variable}", device_name(d)))
}

/// The value a plant starts with: device `d`, `V<j>`.
pub fn initial(d: usize, j: usize) -> f64 {
    (d * 1000 + j) as f64 + 0.5
}

impl OpcuaServer {
    /// A server on a free port.
    pub fn start(plant: Plant) -> OpcuaServer {
        OpcuaServer::start_on(0, plant)
    }

    /// A server on `port` (0: a free one). It runs on a thread of its own
    /// (with its own runtime), so that it starts and stops the same from
    /// a test's runtime or from none.
    pub fn start_on(port: u16, plant: Plant) -> OpcuaServer {
        OpcuaServer::launch(port, plant, None)
    }

    /// A server on a free port that also has secure endpoints, and takes
    /// the user `x509` logging in with the certificate `x509_user`.
    pub fn start_secure(plant: Plant, x509_user: &Path) -> OpcuaServer {
        OpcuaServer::start_secure_on(0, plant, x509_user)
    }

    /// [`OpcuaServer::start_secure`] on `port`, with a new certificate.
    pub fn start_secure_on(port: u16, plant: Plant, x509_user: &Path) -> OpcuaServer {
        OpcuaServer::launch(port, plant, Some(x509_user.to_owned()))
    }

    /// The server's own certificate (DER).
    pub fn certificate(&self) -> PathBuf {
        self.pki.join("own").join("cert.der")
    }

    fn launch(port: u16, plant: Plant, secure: Option<PathBuf>) -> OpcuaServer {
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let pki = std::env::temp_dir().join(format!(
            "tbgw-test-opcua-pki-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        let server_pki = pki.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the OPC-UA server");
            runtime.block_on(async move {
                let listener = bind(port).await;
                let port = listener.local_addr().expect("its address").port();
                let (server, handle, manager, ns) = build(port, plant, &server_pki, secure.as_deref());
                let token = handle.token().clone();
                let _ = tx.send((port, handle, manager, ns));
                tokio::select! {
                    _ = server.run_with(listener) => {}
                    _ = token.cancelled() => {}
                }
            });
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        });
        let (port, handle, manager, ns) = rx.recv().expect("the OPC-UA server starts");
        OpcuaServer { port, plant, ns, handle, manager, thread: Some(thread), pki }
    }

    pub fn url(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    /// Set `variable` of device `d`, stamped now.
    pub fn set(&self, d: usize, variable: &str, value: impl Into<Variant>) {
        self.set_many([(node(self.ns, d, variable), value.into())]);
    }

    /// Set many nodes at once, stamped now.
    pub fn set_many(&self, values: impl IntoIterator<Item = (NodeId, Variant)>) {
        let now = DateTime::now();
        let values: Vec<(NodeId, DataValue)> = values
            .into_iter()
            .map(|(n, v)| {
                let mut dv = DataValue::new_at(v, now);
                dv.server_timestamp = Some(now);
                (n, dv)
            })
            .collect();
        let _ = self.manager.set_values(self.handle.subscriptions(), values.iter().map(|(n, v)| (n, None, v.clone())));
    }

    /// The value `variable` of device `d` holds now.
    pub fn value(&self, d: usize, variable: &str) -> Option<Variant> {
        let space = self.manager.address_space().read();
        match space.find(&node(self.ns, d, variable))? {
            opcua::server::address_space::NodeType::Variable(v) => {
                v.value(TimestampsToReturn::Neither, &NumericRange::None, &DataEncoding::Binary, 0.0).value
            }
            _ => None,
        }
    }

    /// A device more, `Boiler <d>`, as `start` makes them (a plant that
    /// grows while a client is connected).
    pub fn add_device(&self, d: usize) {
        let mut space = self.manager.address_space().write();
        add_device(&self.manager, &mut space, self.ns, self.plant, d);
    }

    /// Every `V<j>` of every device to `initial(d, j) + step`.
    pub fn tick(&self, step: f64) {
        (self.setter())(step)
    }

    /// [`OpcuaServer::tick`] for another thread (a bench's ticker).
    pub fn setter(&self) -> impl Fn(f64) + Send + 'static {
        let (manager, subscriptions, ns, p) =
            (self.manager.clone(), self.handle.subscriptions().clone(), self.ns, self.plant);
        move |step| {
            let now = DateTime::now();
            let values: Vec<(NodeId, DataValue)> = (1..=p.devices)
                .flat_map(|d| (0..p.variables).map(move |j| (d, j)))
                .map(|(d, j)| {
                    let mut dv = DataValue::new_at(Variant::Double(initial(d, j) + step), now);
                    dv.server_timestamp = Some(now);
                    (node(ns, d, &format!("V{j}")), dv)
                })
                .collect();
            let _ = manager.set_values(&subscriptions, values.iter().map(|(n, v)| (n, None, v.clone())));
        }
    }

    /// Stop the server (its sessions end at once).
    pub fn stop(mut self) -> u16 {
        self.shutdown();
        self.port
    }

    fn shutdown(&mut self) {
        self.handle.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_dir_all(&self.pki);
        }
    }
}

impl Drop for OpcuaServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A listener on 127.0.0.1:`port`; the port of a server just stopped may
/// linger a moment.
async fn bind(port: u16) -> tokio::net::TcpListener {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) if tries >= 50 => panic!("bind the OPC-UA server on 127.0.0.1:{port}: {e}"),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The server and its plant.
fn build(
    port: u16,
    plant: Plant,
    pki: &Path,
    secure: Option<&Path>,
) -> (opcua::server::Server, ServerHandle, Arc<SimpleNodeManager>, u16) {
    let mut builder = ServerBuilder::new()
        .application_name("tbgw test plant")
        .application_uri("urn:tbgw:test:server")
        .product_uri("urn:tbgw:test")
        .host("127.0.0.1")
        .port(port)
        .pki_dir(pki)
        .create_sample_keypair(secure.is_some())
        // The clients' side of trust is what the tests check.
        .trust_client_certs(true)
        .discovery_urls(vec![format!("opc.tcp://127.0.0.1:{port}/")])
        .add_user_token(USER.0, ServerUserToken::user_pass(USER.0, USER.1));
    if let Some(x509_user) = secure {
        builder = builder.add_user_token("x509", ServerUserToken::x509("x509", x509_user));
        let users = [ANONYMOUS_USER_TOKEN_ID.to_owned(), USER.0.to_owned(), "x509".to_owned()];
        for policy in POLICIES {
            for mode in [MessageSecurityMode::Sign, MessageSecurityMode::SignAndEncrypt] {
                let id = format!("{policy}-{mode:?}");
                builder = builder.add_endpoint(id, ServerEndpoint::new("/", policy, mode, &users));
            }
        }
    } else {
        let users = [ANONYMOUS_USER_TOKEN_ID.to_owned(), USER.0.to_owned()];
        builder = builder.add_endpoint("none", ServerEndpoint::new_none("/", &users));
    }
    for i in 0..plant.extra_namespaces {
        builder = builder.with_node_manager(simple_node_manager(
            NamespaceMetadata { namespace_uri: format!("urn:tbgw:test:extra{i}"), ..Default::default() },
            &format!("extra{i}"),
        ));
    }
    builder = builder.with_node_manager(simple_node_manager(
        NamespaceMetadata { namespace_uri: NAMESPACE.to_owned(), ..Default::default() },
        "plant",
    ));
    let limits = builder.limits_mut();
    limits.subscriptions.max_monitored_items_per_sub = plant.items_per_subscription;
    limits.subscriptions.max_subscriptions_per_session = 100;
    limits.max_array_length = 100_000;
    if plant.nodes_per_call > 0 {
        limits.operational.max_nodes_per_read = plant.nodes_per_call;
        limits.operational.max_nodes_per_translate_browse_paths_to_node_ids = plant.nodes_per_call;
    }
    if plant.monitored_items_per_call > 0 {
        limits.operational.max_monitored_items_per_call = plant.monitored_items_per_call;
    }
    let (server, handle) = builder.build().expect("build the OPC-UA server");
    let ns = handle.get_namespace_index(NAMESPACE).expect("the plant's namespace");
    let manager = handle.node_managers().get_by_name::<SimpleNodeManager>("plant").expect("the plant's node manager");
    {
        let mut space = manager.address_space().write();
        let plant_folder = NodeId::new(ns, "Plant");
        space.add_folder(&plant_folder, QualifiedName::new(ns, "Plant"), "Plant", &ObjectId::ObjectsFolder.into());
        for d in 1..=plant.devices {
            add_device(&manager, &mut space, ns, plant, d);
        }
    }
    (server, handle, manager, ns)
}

/// Device `d` of the plant: its folder under `Plant`, its variables and
/// methods.
fn add_device(
    manager: &SimpleNodeManager,
    space: &mut opcua::server::address_space::AddressSpace,
    ns: u16,
    plant: Plant,
    d: usize,
) {
    let plant_folder = NodeId::new(ns, "Plant");
    let folder = NodeId::new(ns, device_name(d));
    let name = device_name(d);
    space.add_folder(&folder, QualifiedName::new(ns, name.as_str()), name.as_str(), &plant_folder);
    let mut vars = vec![
        Variable::new(
            &node(ns, d, "SerialNumber"),
            QualifiedName::new(ns, "SerialNumber"),
            "SerialNumber",
            UAString::from(format!("SN-{d}")),
        ),
        Variable::new(&node(ns, d, "Temperature"), QualifiedName::new(ns, "Temperature"), "Temperature", 20.5),
        Variable::new(&node(ns, d, "Füllstand"), QualifiedName::new(ns, "Füllstand"), "Füllstand", 75.0),
    ];
    for j in 0..plant.variables {
        let v = format!("V{j}");
        vars.push(Variable::new(&node(ns, d, &v), QualifiedName::new(ns, v.as_str()), v.as_str(), initial(d, j)));
    }
    space.add_variables(vars, &folder);
    let writable = [
        ("SetPoint", Variant::from(50i16)),
        ("Relay", Variant::from(false)),
        ("Label", Variant::from(UAString::from("idle"))),
        ("Curve", Variant::from(vec![1.0f64, 2.0, 3.0])),
    ];
    let writable: Vec<Variable> = writable
        .into_iter()
        .map(|(name, value)| {
            let array = value.is_array();
            let mut v = Variable::new(&node(ns, d, name), QualifiedName::new(ns, name), name, value);
            if array {
                v.set_value_rank(1);
            }
            v.set_access_level(AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE);
            v.set_user_access_level(AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE);
            v
        })
        .collect();
    space.add_variables(writable, &folder);
    let method = |space: &mut opcua::server::address_space::AddressSpace,
                  name: &str,
                  inputs: &[(&str, DataTypeId)],
                  outputs: &[(&str, DataTypeId)]| {
        let id = node(ns, d, name);
        let mut b = MethodBuilder::new(&id, QualifiedName::new(ns, name), name)
            .component_of(folder.clone())
            .executable(true)
            .user_executable(true);
        if !inputs.is_empty() {
            let args: Vec<_> = inputs.iter().map(|(n, t)| (*n, *t).into()).collect();
            b = b.input_args(space, &node(ns, d, &format!("{name}.in")), &args);
        }
        if !outputs.is_empty() {
            let args: Vec<_> = outputs.iter().map(|(n, t)| (*n, *t).into()).collect();
            b = b.output_args(space, &node(ns, d, &format!("{name}.out")), &args);
        }
        b.insert(space);
        id
    };
    let multiply = method(
        space,
        "multiply",
        &[("a", DataTypeId::Int32), ("b", DataTypeId::Int32)],
        &[("product", DataTypeId::Int32)],
    );
    let minmax = method(
        space,
        "minmax",
        &[("a", DataTypeId::Double), ("b", DataTypeId::Double)],
        &[("min", DataTypeId::Double), ("max", DataTypeId::Double)],
    );
    let fail = method(space, "fail", &[], &[]);
    // A callback checks its arguments' types as a strict server
    // does: a call with the wrong Variant types is refused.
    manager.inner().add_method_callback(multiply, |args| match args {
        [Variant::Int32(a), Variant::Int32(b)] => Ok(vec![Variant::Int32(a.wrapping_mul(*b))]),
        _ => Err(StatusCode::BadTypeMismatch),
    });
    manager.inner().add_method_callback(minmax, |args| match args {
        [Variant::Double(a), Variant::Double(b)] => Ok(vec![Variant::Double(a.min(*b)), Variant::Double(a.max(*b))]),
        _ => Err(StatusCode::BadTypeMismatch),
    });
    manager.inner().add_method_callback(fail, |_| Err(StatusCode::BadInvalidState));
}
