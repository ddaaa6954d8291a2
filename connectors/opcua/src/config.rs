//! The OPC-UA connector's configuration: the ThingsBoard IoT Gateway's
//! `opcua.json`, so that its users' files load unchanged, in its current
//! format and in the older one its `BackwardCompatibilityAdapter` reads
//! (`server.mapping[]` with `deviceNamePattern`, `path` keys,
//! `disableSubscriptions`), which [`upgrade`] rewrites into the current one
//! as that adapter does.
//!
//! ```json
//! {"server": {"url": "opc.tcp://plc:4840", "pollPeriodInMillis": 500, "enableSubscriptions": true,
//!             "identity": {"type": "anonymous"}},
//!  "mapping": [{"deviceNodeSource": "path", "deviceNodePattern": "Root\\.Objects\\.Boiler",
//!               "deviceInfo": {"deviceNameExpression": "Boiler ${SerialNumber}", "deviceNameExpressionSource": "path"},
//!               "timeseries": [{"key": "temperature", "type": "path", "value": "${Temperature}"}]}]}
//! ```
//!
//! Every `server` key the Python gateway reads is read, with its code's
//! defaults (not its sample file's): `timeoutInMillis` 4000,
//! `scanPeriodInMillis` 3600000, `pollPeriodInMillis` 5000 (sub-second
//! periods are kept; the Python gateway truncates them to whole seconds),
//! `enableSubscriptions` true, `subCheckPeriodInMillis` 100 (the
//! subscriptions' publishing interval), `sessionTimeoutInMillis` 120000,
//! `reconnectBackoffInitialDelay` 1 s. Its batching knobs
//! (`subDataMaxBatchSize`, `subDataMinBatchCreationTimeMs`,
//! `subscriptionProcessBatchSize`) are accepted with a notice: tbgw hands
//! each notification the server publishes on as one batch.
//! `reconnectRetriesCount` too: tbgw reconnects forever.
//!
//! A mapping's `attributes_updates` and `rpc_methods` are checked here and
//! handed to the built-in `opcua` downlink converter (or the mapping's
//! `downlinkConverter`); mappings whose downlink part is the same share one
//! converter, which serves the devices the connector finds for them
//! ([`Devices::Found`]: their names are known only once read from the
//! server).
//!
//! Security, as in the Python gateway: `security` (the policy) applies to
//! certificate identities (`identity.type` `cert.PEM` or `certificates`),
//! which open a signed (`mode: Sign`) or signed and encrypted channel
//! (`SignAndEncrypt`, the default) with the client's certificate
//! (`cert`, `privateKey`) and log in with `username`/`password` when given,
//! else anonymously; anonymous and username identities connect without
//! message security. tbgw adds `type: x509`, the same channel with the
//! certificate as the user identity too, the policies Aes128Sha256RsaOaep
//! and Aes256Sha256RsaPss beside Basic128Rsa15, Basic256 and
//! Basic256Sha256 (the default, where the Python gateway has none), and a
//! trust list: the server's certificate is trusted when it is `caCert`, or
//! in `<pkiDir>/trusted/`, or (only with `trustOnFirstUse: true`) when it
//! is the first one seen; `pkiDir` defaults to `opcua-pki/<connector>` next
//! to the configuration.

use crate::path::{self, Expression, NodeRef};
use opcua::crypto::SecurityPolicy;
use opcua::types::MessageSecurityMode;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tbgw_core::config::{Diagnostics, Obj};
use tbgw_core::report::{self, ReportPolicy};
use tbgw_core::setup::{
    self, ComponentRef, ConverterDecl, Devices, DownlinkDecl, FoundDevices, LimitsDecl, RouteDecl, Site,
};

/// How the gateway logs in.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    UserName {
        user: String,
        password: String,
    },
    /// The channel's certificate as the user identity (X509IdentityToken).
    X509,
}

impl std::fmt::Debug for Identity {
    // Never the password: a config may be logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("Anonymous"),
            Identity::UserName { user, .. } => write!(f, "UserName({user:?}, password redacted)"),
            Identity::X509 => f.write_str("X509"),
        }
    }
}

/// A signed (and encrypted) channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub policy: SecurityPolicy,
    pub mode: MessageSecurityMode,
    /// The client's application instance certificate and its key.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The server's certificate, trusted (`caCert`).
    pub server_certificate: Option<PathBuf>,
    /// Trust the server's certificate when none is trusted yet.
    pub trust_on_first_use: bool,
    /// Where trusted and rejected server certificates are kept.
    pub pki_dir: PathBuf,
}

/// The server and how to talk to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub url: String,
    /// Each request's timeout (`timeoutInMillis`).
    pub timeout: Duration,
    /// How often devices and nodes are looked for again (`scanPeriodInMillis`).
    pub scan_period: Duration,
    /// How often nodes are read without subscriptions (`pollPeriodInMillis`).
    pub poll_period: Duration,
    pub subscriptions: bool,
    /// The subscriptions' publishing interval (`subCheckPeriodInMillis`).
    pub publish_interval: Duration,
    pub session_timeout: Duration,
    pub identity: Identity,
    /// Message security, for certificate identities.
    pub channel: Option<Channel>,
    /// The client's application URI (`uri`).
    pub application_uri: Option<String>,
    /// The first wait before connecting again (`reconnectBackoffInitialDelay`).
    pub reconnect_initial: Duration,
}

/// Which part of ThingsBoard a key goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Attributes,
    Timeseries,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Attributes => "attributes",
            Section::Timeseries => "timeseries",
        }
    }
}

/// Where a key's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Node(NodeRef),
    /// A `constant`: sent once when the device is found.
    Constant(String),
}

/// One `attributes[]` or `timeseries[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyDecl {
    pub section: Section,
    pub key: String,
    pub source: Source,
    /// `timestampLocation`: `gateway`, `source` or `server`.
    pub timestamp: &'static str,
}

/// One `mapping[]` entry: how to find its devices and their keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// `mapping[2]`, for logs.
    pub path: String,
    pub device_node: NodeRef,
    pub device_name: Expression,
    pub device_profile: Expression,
    pub keys: Vec<KeyDecl>,
}

/// The whole connector configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcuaConfig {
    pub server: Server,
    pub mappings: Vec<Mapping>,
    /// The uplink routes: one per distinct converter and report policy
    /// (a hundred mappings of one shape share one route, and so one set of
    /// converter instances).
    pub(crate) route_decls: Vec<RouteDecl>,
    /// The route (an index into `route_decls`) of each mapping.
    pub(crate) mapping_routes: Vec<usize>,
    /// The downlink converters: one per distinct downlink part of the
    /// mappings, each serving the devices the connector finds for them.
    pub(crate) downlinks: Vec<DownlinkDecl>,
    /// The downlink converter (an index into `downlinks`) of each mapping.
    pub(crate) mapping_downlinks: Vec<usize>,
}

/// Read `opcua.json` (paths relative to `site.base_dir`); problems go to
/// `d` by path.
pub fn parse(doc: &Value, site: &Site<'_>, d: &mut Diagnostics) -> Option<OpcuaConfig> {
    let base_dir = site.base_dir;
    let doc = upgrade(doc, d);
    let mut root = Obj::new(d, "", &doc)?;
    let server = root.object(d, "server").and_then(|o| server(d, o, site));
    if !root.has("server") {
        d.error("server", "required: the OPC-UA server (`{\"url\": \"opc.tcp://host:4840\"}`)");
    }
    let route_report = root.get("reportStrategy").and_then(|v| report::parse(d, "reportStrategy", v));
    let mut mappings = Vec::new();
    let mut route_decls: Vec<RouteDecl> = Vec::new();
    let mut mapping_routes = Vec::new();
    let mut downlinks: Vec<DownlinkDecl> = Vec::new();
    let mut mapping_downlinks = Vec::new();
    for (path, entry) in root.list(d, "mapping") {
        if let Some((m, route, downlink)) = mapping(d, &path, entry, base_dir, route_report) {
            mappings.push(m);
            // Mappings whose downlink part is the same share one converter
            // (and the set of devices the connector finds for them).
            let same = |decl: &DownlinkDecl| {
                let a = &decl.converter;
                a.component == downlink.component && a.config == downlink.config && a.limits == downlink.limits
            };
            let slot = downlinks.iter().position(same).unwrap_or_else(|| {
                downlinks.push(DownlinkDecl { converter: downlink, devices: Devices::Found(FoundDevices::default()) });
                downlinks.len() - 1
            });
            mapping_downlinks.push(slot);
            let same = |r: &RouteDecl| {
                let (a, b) = (&r.converter, &route.converter);
                a.component == b.component && a.config == b.config && a.limits == b.limits && r.report == route.report
            };
            let slot = route_decls.iter().position(same).unwrap_or_else(|| {
                route_decls.push(route);
                route_decls.len() - 1
            });
            mapping_routes.push(slot);
        }
    }
    root.allow(&tbgw_core::config::GATEWAY_KEYS);
    root.allow(&["name", "id"]);
    root.finish(d);
    Some(OpcuaConfig { server: server?, mappings, route_decls, mapping_routes, downlinks, mapping_downlinks })
}

fn millis(d: &mut Diagnostics, o: &mut Obj, key: &'static str, default: u64) -> Duration {
    Duration::from_millis(o.uint(d, key, 1..=u64::from(u32::MAX)).unwrap_or(default))
}

fn server(d: &mut Diagnostics, mut o: Obj, site: &Site<'_>) -> Option<Server> {
    let url = o.required_string(d, "url").map(|u| {
        // As the Python gateway: a bare `host:port/path` is an opc.tcp URL.
        if u.contains("opc.tcp") { u.to_owned() } else { format!("opc.tcp://{u}") }
    });
    let timeout = millis(d, &mut o, "timeoutInMillis", 4000);
    let mut scan_period = millis(d, &mut o, "scanPeriodInMillis", 3_600_000);
    if scan_period < Duration::from_secs(1) {
        d.notice(o.field("scanPeriodInMillis"), "below a second: the server is scanned again every second");
        scan_period = Duration::from_secs(1);
    }
    let poll_period = millis(d, &mut o, "pollPeriodInMillis", 5000);
    let subscriptions = o.bool(d, "enableSubscriptions").unwrap_or(true);
    let publish_interval = millis(d, &mut o, "subCheckPeriodInMillis", 100);
    let session_timeout = millis(d, &mut o, "sessionTimeoutInMillis", 120_000);
    let reconnect_initial = match o.get("reconnectBackoffInitialDelay") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|s| s > 0.0 && s <= 3600.0) => {
            Duration::from_secs_f64(n.as_f64().unwrap_or(1.0))
        }
        Some(other) => {
            d.error(o.field("reconnectBackoffInitialDelay"), format!("expected seconds from 0 to 3600, found {other}"));
            Duration::from_secs(1)
        }
        None => Duration::from_secs(1),
    };
    let application_uri = o.string(d, "uri").map(str::to_owned);
    let security = o.string(d, "security");
    let pki_dir = match o.string(d, "pkiDir") {
        Some(dir) => site.base_dir.join(dir),
        None => site.base_dir.join("opcua-pki").join(file_name(site.name)),
    };
    let identity = match o.object(d, "identity") {
        Some(i) => identity(d, i, security, site.base_dir, pki_dir),
        None => Some((Identity::Anonymous, None)),
    };
    if identity.as_ref().is_some_and(|(_, c)| c.is_none())
        && let Some(policy) = security
        && policy != "None"
    {
        d.notice(
            o.field("security"),
            format!("{policy} applies to certificate identities (identity.type cert.PEM): this one connects without message security"),
        );
    }
    o.unused(
        d,
        &[
            ("subDataMaxBatchSize", "tbgw hands each notification the server publishes on as one batch"),
            ("subDataMinBatchCreationTimeMs", "tbgw hands each notification the server publishes on as one batch"),
            ("subscriptionProcessBatchSize", "monitored items are created in chunks of the server's own limits"),
            ("reconnectRetriesCount", "tbgw reconnects forever, the wait doubling up to a minute"),
            ("reconnectBackoffFactor", "the wait doubles after each failed attempt, up to a minute"),
            ("subKeepAlivePeriodInSeconds", "the session's keep-alive detects a server that stopped answering"),
            ("showMap", "tbgw logs each device's nodes at debug level"),
        ],
    );
    o.allow(&["name"]);
    o.finish(d);
    Some(Server {
        url: url?,
        timeout,
        scan_period,
        poll_period,
        subscriptions,
        publish_interval,
        session_timeout,
        identity: identity.as_ref()?.0.clone(),
        channel: identity?.1,
        application_uri,
        reconnect_initial,
    })
}

fn identity(
    d: &mut Diagnostics,
    mut o: Obj,
    security: Option<&str>,
    base: &Path,
    pki_dir: PathBuf,
) -> Option<(Identity, Option<Channel>)> {
    let kind = o.string(d, "type").unwrap_or("anonymous");
    let user = o.string(d, "username");
    let password = o.string(d, "password");
    let login = user.map(|u| Identity::UserName { user: u.to_owned(), password: password.unwrap_or("").to_owned() });
    let out = match kind {
        "anonymous" if user.is_none() => Some((Identity::Anonymous, None)),
        // The Python gateway logs in with `username` whatever `type` says.
        "anonymous" | "username" | "basic" => match login {
            Some(login) => Some((login, None)),
            None => {
                d.error(o.field("username"), "required for a username identity");
                None
            }
        },
        "cert.PEM" | "certificates" | "x509" => {
            let channel = channel(d, &mut o, security, base, pki_dir);
            let identity = match (kind, login) {
                ("x509", _) => Identity::X509,
                (_, Some(login)) => login,
                (_, None) => Identity::Anonymous,
            };
            channel.map(|c| (identity, Some(c)))
        }
        other => {
            d.error(o.field("type"), format!("`{other}`: expected anonymous, username, cert.PEM or x509"));
            None
        }
    };
    o.finish(d);
    out
}

/// The channel a certificate identity opens.
fn channel(d: &mut Diagnostics, o: &mut Obj, security: Option<&str>, base: &Path, pki_dir: PathBuf) -> Option<Channel> {
    let policy = match security.unwrap_or("Basic256Sha256") {
        "Basic128Rsa15" => Some(SecurityPolicy::Basic128Rsa15),
        "Basic256" => Some(SecurityPolicy::Basic256),
        "Basic256Sha256" => Some(SecurityPolicy::Basic256Sha256),
        "Aes128Sha256RsaOaep" => Some(SecurityPolicy::Aes128Sha256RsaOaep),
        "Aes256Sha256RsaPss" => Some(SecurityPolicy::Aes256Sha256RsaPss),
        other => {
            d.error(
                "server.security",
                format!(
                    "`{other}`: expected Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss, Basic256 or \
                     Basic128Rsa15 (a certificate identity signs its messages)"
                ),
            );
            None
        }
    };
    let mode = match o.string(d, "mode").unwrap_or("SignAndEncrypt") {
        "SignAndEncrypt" => Some(MessageSecurityMode::SignAndEncrypt),
        "Sign" => Some(MessageSecurityMode::Sign),
        other => {
            d.error(o.field("mode"), format!("`{other}`: expected Sign or SignAndEncrypt"));
            None
        }
    };
    // The Python gateway's names, and its older ones.
    let mut file = |d: &mut Diagnostics, key: &'static str, old: &'static str, required: bool| -> Option<PathBuf> {
        let (key, text) = match (o.string(d, key), o.string(d, old)) {
            (Some(t), _) => (key, t),
            (None, Some(t)) => (old, t),
            (None, None) => {
                if required {
                    d.error(o.field(key), "required for a certificate identity (a PEM or DER file)");
                }
                return None;
            }
        };
        let path = base.join(text);
        if !path.is_file() {
            d.error(o.field(key), format!("no file {}", path.display()));
            return None;
        }
        Some(path)
    };
    let certificate = file(d, "cert", "pathToClientCert", true);
    let private_key = file(d, "privateKey", "pathToPrivateKey", true);
    let server_certificate = file(d, "caCert", "pathToCACert", false);
    let trust_on_first_use = o.bool(d, "trustOnFirstUse").unwrap_or(false);
    Some(Channel {
        policy: policy?,
        mode: mode?,
        certificate: certificate?,
        private_key: private_key?,
        server_certificate,
        trust_on_first_use,
        pki_dir,
    })
}

/// A connector's name as a directory name.
fn file_name(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if clean.is_empty() || clean.starts_with('.') { format!("connector{clean}") } else { clean }
}

/// A node written as `source` (`path`, `identifier`) says, or as it reads
/// when the source is not given.
fn node_at(d: &mut Diagnostics, path: &str, text: &str, source: Option<&str>) -> Option<NodeRef> {
    let text = text.trim();
    let inner = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')).unwrap_or(text);
    let r = match source {
        Some("identifier") => path::node_id(inner).map(NodeRef::Id),
        Some("path") => path::browse_path(inner),
        _ => path::node_ref(inner),
    };
    r.map_err(|e| d.error(path, e)).ok()
}

fn expression(d: &mut Diagnostics, o: &mut Obj, key: &'static str, source_key: &'static str) -> Option<Expression> {
    let text = o.string(d, key)?;
    let source = o.string(d, source_key);
    let constant = match source {
        Some("constant") => true,
        Some("path" | "identifier") | None => false,
        Some(other) => {
            d.error(o.field(source_key), format!("`{other}`: expected constant, path or identifier"));
            return None;
        }
    };
    Expression::parse(text, constant).map_err(|e| d.error(o.field(key), e)).ok()
}

fn mapping(
    d: &mut Diagnostics,
    path: &str,
    entry: &Value,
    base: &Path,
    route_report: Option<report::Strategy>,
) -> Option<(Mapping, RouteDecl, ConverterDecl)> {
    let mut o = Obj::new(d, path, entry)?;
    let source = o.string(d, "deviceNodeSource");
    if let Some(s) = source
        && !matches!(s, "path" | "identifier")
    {
        d.error(o.field("deviceNodeSource"), format!("`{s}`: expected path or identifier"));
    }
    let device_node = o
        .required_string(d, "deviceNodePattern")
        .and_then(|text| node_at(d, &o.field("deviceNodePattern"), text, source));
    let (mut device_name, mut device_profile) = (None, None);
    match o.object(d, "deviceInfo") {
        Some(mut info) => {
            if !info.has("deviceNameExpression") {
                d.error(info.field("deviceNameExpression"), "required: the devices' name");
            }
            device_name = expression(d, &mut info, "deviceNameExpression", "deviceNameExpressionSource");
            device_profile = if info.has("deviceProfileExpression") {
                expression(d, &mut info, "deviceProfileExpression", "deviceProfileExpressionSource")
            } else {
                Some(Expression::parse("default", true).unwrap_or(Expression(Vec::new())))
            };
            info.finish(d);
        }
        None => d.error(o.field("deviceInfo"), "required: `{\"deviceNameExpression\": ...}`"),
    }
    let mut policy = ReportPolicy { route: route_report, ..Default::default() };
    if let Some(v) = o.get("reportStrategy")
        && let Some(s) = report::parse(d, &o.field("reportStrategy"), v)
    {
        policy.route = Some(s);
    }
    let mut keys = Vec::new();
    for (section, name) in [(Section::Attributes, "attributes"), (Section::Timeseries, "timeseries")] {
        for (kpath, k) in o.list(d, name) {
            if let Some(k) = key(d, &kpath, k, section, &mut policy) {
                keys.push(k);
            }
        }
    }
    let converter = match o.get("converter") {
        None => builtin(path),
        // The Python gateway's own classes: its built-in is this one.
        Some(Value::String(class)) if class.starts_with("Opc") && class.ends_with("Converter") => {
            d.notice(o.field("converter"), format!("`{class}`: tbgw's built-in `opcua` converter"));
            builtin(path)
        }
        Some(Value::String(file)) => {
            let file = setup::wasm_file(d, &o.field("converter"), file)?;
            setup::custom(&o.field("converter"), base, file, entry.to_string(), LimitsDecl::default())
        }
        Some(c) => match setup::converter(d, &o.field("converter"), c, base, "opcua")? {
            c if c.component == ComponentRef::Builtin("opcua".into()) => {
                setup::only_type_and_limits(d, &o.field("converter"), o.get("converter").unwrap_or(&Value::Null));
                ConverterDecl { limits: c.limits, ..builtin(path) }
            }
            ConverterDecl { component: ComponentRef::Builtin(other), .. } => {
                d.error(
                    o.field("converter.type"),
                    format!("`{other}` is not an OPC-UA converter; expected opcua or custom"),
                );
                return None;
            }
            c => c,
        },
    };
    let downlink = downlink(d, &mut o, path, entry, base);
    o.finish(d);
    let m = Mapping {
        path: path.to_owned(),
        device_node: device_node?,
        device_name: device_name?,
        device_profile: device_profile?,
        keys,
    };
    Some((m, RouteDecl { converter, report: policy, answers: None }, downlink?))
}

/// A mapping's downlink converter: its `downlinkConverter` (a custom
/// component, given the whole mapping), else the built-in `opcua` one,
/// given the mapping's `attributes_updates` and `rpc_methods` (checked
/// here, so that errors name the mapping's fields).
fn downlink(d: &mut Diagnostics, o: &mut Obj, path: &str, entry: &Value, base: &Path) -> Option<ConverterDecl> {
    let mut updates = Vec::new();
    for (upath, u) in o.list(d, "attributes_updates") {
        let Some(mut u) = Obj::new(d, &upath, u) else { continue };
        let key = u.required_string(d, "key").map(str::to_owned);
        let source = u.string(d, "type");
        if let Some(s) = source
            && !matches!(s, "path" | "identifier")
        {
            d.error(u.field("type"), format!("`{s}`: expected path or identifier"));
        }
        let value = u.required_string(d, "value").map(str::to_owned);
        if let Some(v) = &value {
            let bare = v.strip_prefix("${").and_then(|n| n.strip_suffix('}')).unwrap_or(v);
            node_at(d, &u.field("value"), bare, source);
        }
        u.finish(d);
        if let (Some(key), Some(value)) = (key, value) {
            updates.push(json!({"key": key, "value": value}));
        }
    }
    let mut methods = Vec::new();
    for (mpath, m) in o.list(d, "rpc_methods") {
        let Some(mut m) = Obj::new(d, &mpath, m) else { continue };
        let name = m.required_string(d, "method").map(str::to_owned);
        let mut arguments = Vec::new();
        for (apath, a) in m.list(d, "arguments") {
            let Some(mut a) = Obj::new(d, &apath, a) else { continue };
            a.string(d, "type");
            let value = a.get("value").cloned().unwrap_or(Value::Null);
            a.finish(d);
            arguments.push(json!({"value": value}));
        }
        m.finish(d);
        if let Some(name) = name {
            methods.push(json!({"method": name, "arguments": arguments}));
        }
    }
    let builtin = ConverterDecl {
        path: path.to_owned(),
        label: "opcua".into(),
        component: ComponentRef::Builtin("opcua".into()),
        config: json!({"attributes_updates": updates, "rpc_methods": methods}).to_string(),
        limits: LimitsDecl::default(),
    };
    match o.get("downlinkConverter") {
        None => Some(builtin),
        Some(Value::String(file)) => {
            let file = setup::wasm_file(d, &o.field("downlinkConverter"), file)?;
            Some(setup::custom(&o.field("downlinkConverter"), base, file, entry.to_string(), LimitsDecl::default()))
        }
        Some(c) => match setup::converter(d, &o.field("downlinkConverter"), c, base, "opcua")? {
            c if c.component == builtin.component => {
                setup::only_type_and_limits(
                    d,
                    &o.field("downlinkConverter"),
                    o.get("downlinkConverter").unwrap_or(&Value::Null),
                );
                Some(ConverterDecl { limits: c.limits, ..builtin })
            }
            ConverterDecl { component: ComponentRef::Builtin(other), .. } => {
                d.error(
                    o.field("downlinkConverter.type"),
                    format!("`{other}` is not an OPC-UA converter; expected opcua or custom"),
                );
                None
            }
            c => Some(c),
        },
    }
}

fn key(d: &mut Diagnostics, path: &str, v: &Value, section: Section, policy: &mut ReportPolicy) -> Option<KeyDecl> {
    let mut o = Obj::new(d, path, v)?;
    let name = o.required_string(d, "key");
    let kind = o.string(d, "type");
    let value = o.required_string(d, "value");
    let source = match (kind, value) {
        (_, None) => None,
        (Some("constant"), Some(v)) => Some(Source::Constant(v.to_owned())),
        (Some("path" | "identifier") | None, Some(v)) => node_at(d, &o.field("value"), v, kind).map(Source::Node),
        (Some(other), Some(_)) => {
            d.error(o.field("type"), format!("`{other}`: expected path, identifier or constant"));
            None
        }
    };
    let timestamp = match o.string(d, "timestampLocation").map(str::to_ascii_lowercase).as_deref() {
        None | Some("gateway") => "gateway",
        Some("sourcetimestamp") | Some("source") => "source",
        Some("servertimestamp") | Some("server") => "server",
        Some(other) => {
            d.error(
                o.field("timestampLocation"),
                format!("`{other}`: expected gateway, sourceTimestamp or serverTimestamp"),
            );
            "gateway"
        }
    };
    if let Some(v) = o.get("reportStrategy")
        && let Some(s) = report::parse(d, &o.field("reportStrategy"), v)
        && let Some(name) = name
    {
        policy.keys.insert(name.to_owned(), s);
    }
    o.finish(d);
    Some(KeyDecl { section, key: name?.to_owned(), source: source?, timestamp })
}

fn builtin(path: &str) -> ConverterDecl {
    ConverterDecl {
        path: format!("{path}.converter"),
        label: "opcua".into(),
        component: ComponentRef::Builtin("opcua".into()),
        // The connector resolves the mapping and sends each value with its
        // key: the converter needs nothing of the document.
        config: "{}".into(),
        limits: LimitsDecl::default(),
    }
}

/// The older format, rewritten into the current one as the Python
/// gateway's `BackwardCompatibilityAdapter` does (a document already in the
/// current format comes back unchanged): `server.mapping[]` moves to
/// `mapping[]`; `deviceNamePattern` and `deviceTypePattern` become
/// `deviceInfo`; each `path` becomes `type` + `value`;
/// `attributeOnThingsBoard`/`attributeOnDevice` become `key`/`value`;
/// `disableSubscriptions` becomes `enableSubscriptions`.
pub fn upgrade(doc: &Value, d: &mut Diagnostics) -> Value {
    let Some(old) = doc.get("server").and_then(|s| s.get("mapping")).and_then(Value::as_array) else {
        return doc.clone();
    };
    if doc.get("mapping").is_some() {
        return doc.clone();
    }
    d.notice("server.mapping", "the older opcua.json format, read as the current one (`mapping[]`)");
    let mut doc = doc.clone();
    let source = |text: &str, may_be_constant: bool| {
        let inner = text.contains("${");
        if path::is_node_id(text.trim_start_matches("${").trim_end_matches('}')) {
            "identifier"
        } else if inner || !may_be_constant {
            "path"
        } else {
            "constant"
        }
    };
    let mut mapping = Vec::new();
    for m in old {
        let Value::Object(m) = m else {
            mapping.push(m.clone());
            continue;
        };
        let mut m: Map<String, Value> = m.clone();
        let pattern = m.get("deviceNodePattern").and_then(Value::as_str).unwrap_or("").to_owned();
        m.insert("deviceNodeSource".into(), json!(source(&pattern, false)));
        let name = m.remove("deviceNamePattern").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let profile = m.remove("deviceTypePattern").and_then(|v| v.as_str().map(str::to_owned));
        let profile = profile.unwrap_or_else(|| "default".into());
        m.insert(
            "deviceInfo".into(),
            json!({
                "deviceNameExpression": name, "deviceNameExpressionSource": source(&name, true),
                "deviceProfileExpression": profile, "deviceProfileExpressionSource": source(&profile, true),
            }),
        );
        for section in ["attributes", "timeseries"] {
            if let Some(Value::Array(entries)) = m.get_mut(section) {
                for e in entries.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(p) = e.remove("path") {
                        let kind = p.as_str().map_or("constant", |t| source(t, true));
                        e.insert("type".into(), json!(kind));
                        e.insert("value".into(), p);
                    }
                }
            }
        }
        if let Some(Value::Array(entries)) = m.get_mut("attributes_updates") {
            for e in entries.iter_mut().filter_map(Value::as_object_mut) {
                let key = e.remove("attributeOnThingsBoard");
                if let Some(device) = e.remove("attributeOnDevice") {
                    e.insert("type".into(), json!(device.as_str().map_or("path", |t| source(t, true))));
                    e.insert("value".into(), device);
                }
                if let Some(key) = key {
                    e.insert("key".into(), key);
                }
            }
        }
        mapping.push(Value::Object(m));
    }
    if let Some(server) = doc.get_mut("server").and_then(Value::as_object_mut) {
        server.remove("mapping");
        if let Some(disable) = server.remove("disableSubscriptions") {
            server.insert("enableSubscriptions".into(), json!(disable.as_bool().map(|b| !b)));
        }
    }
    if let Some(root) = doc.as_object_mut() {
        root.insert("mapping".into(), Value::Array(mapping));
    }
    doc
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
