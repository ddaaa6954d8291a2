use super::*;
use crate::path::{Element, Part};
use opcua::types::NodeId;

fn read(doc: &Value) -> (Option<OpcuaConfig>, Diagnostics) {
    let mut d = Diagnostics::default();
    let c = parse(doc, &Site { name: "PLC 1", base_dir: Path::new("/etc/tbgw") }, &mut d);
    (c, d)
}

fn errors(doc: Value) -> Vec<String> {
    read(&doc).1.errors.iter().map(ToString::to_string).collect()
}

fn el(ns: Option<u16>, name: &str) -> Element {
    Element { ns, name: name.to_owned() }
}

#[test]
fn the_python_gateways_sample_loads_with_its_code_defaults() {
    let doc: Value = serde_json::from_str(include_str!("python-sample.json")).unwrap();
    let (c, d) = read(&doc);
    assert_eq!(d.errors, vec![], "{d:?}");
    let c = c.unwrap();
    let s = &c.server;
    assert_eq!(s.url, "opc.tcp://127.0.0.1:4840/freeopcua/server/");
    assert_eq!(
        (s.timeout, s.poll_period, s.scan_period),
        (Duration::from_secs(5), Duration::from_secs(5), Duration::from_secs(3600))
    );
    assert!(!s.subscriptions);
    assert_eq!(s.publish_interval, Duration::from_millis(100));
    assert_eq!(s.identity, Identity::Anonymous);
    let m = &c.mappings[0];
    assert_eq!(
        m.device_node,
        NodeRef::Path { absolute: true, elements: vec![el(Some(0), "Objects"), el(None, "MyObject")] }
    );
    assert_eq!(m.device_name.render(&[]), "Demo Device");
    assert_eq!(m.device_profile.render(&[]), "default");
    let keys: Vec<(Section, &str)> = m.keys.iter().map(|k| (k.section, k.key.as_str())).collect();
    assert_eq!(
        keys,
        [
            (Section::Attributes, "frequency"),
            (Section::Attributes, "power"),
            (Section::Timeseries, "temperature"),
            (Section::Timeseries, "humidity"),
            (Section::Timeseries, "relay"),
        ]
    );
    assert_eq!(
        m.keys[2].source,
        Source::Node(NodeRef::Path { absolute: false, elements: vec![el(None, "Temperature")] })
    );
    assert_eq!((c.route_decls.len(), c.mapping_routes.as_slice()), (1, &[0][..]));
    assert_eq!(c.route_decls[0].converter.component, ComponentRef::Builtin("opcua".into()));
    // Its batching knobs are accepted, with why.
    let notices: Vec<String> = d.notices.iter().map(ToString::to_string).collect();
    assert!(notices.iter().any(|n| n.starts_with("server.subDataMaxBatchSize: ignored")), "{notices:?}");
    // Its writes and methods go to the built-in downlink converter, which
    // serves the devices the connector finds for the mapping.
    assert_eq!((c.downlinks.len(), c.mapping_downlinks.as_slice()), (1, &[0][..]));
    let down = &c.downlinks[0];
    assert_eq!(down.converter.component, ComponentRef::Builtin("opcua".into()));
    assert!(matches!(&down.devices, Devices::Found(f) if !f.contains("Temp Sensor")));
    let config: Value = serde_json::from_str(&down.converter.config).unwrap();
    assert_eq!(
        config,
        json!({"attributes_updates": [{"key": "relay", "value": "Root\\.Objects\\.MyObject\\.Relay"}],
               "rpc_methods": [{"method": "multiply", "arguments": [{"value": 2}, {"value": 4}]},
                               {"method": "get_relay", "arguments": []}, {"method": "set_relay", "arguments": []}]})
    );
}

#[test]
fn mappings_with_the_same_downlink_share_one_converter() {
    let mapping = |d: usize, key: &str| {
        json!({"deviceNodeSource": "path", "deviceNodePattern": format!("Root\\.Objects\\.B{d}"),
               "deviceInfo": {"deviceNameExpression": format!("B{d}")},
               "attributes_updates": [{"key": key, "type": "path", "value": "${SetPoint}"}]})
    };
    let doc = json!({"server": {"url": "opc.tcp://127.0.0.1:4840"},
                     "mapping": [mapping(1, "sp"), mapping(2, "sp"), mapping(3, "setpoint")]});
    let (c, d) = read(&doc);
    assert_eq!(d.errors, vec![], "{d:?}");
    let c = c.unwrap();
    assert_eq!((c.downlinks.len(), c.mapping_downlinks.as_slice()), (2, &[0, 0, 1][..]));
    let bad = json!({"server": {"url": "opc.tcp://127.0.0.1:4840"}, "mapping": [{
        "deviceNodePattern": "Root\\.Objects\\.B", "deviceInfo": {"deviceNameExpression": "B"},
        "attributes_updates": [{"key": "sp", "type": "path", "value": "A\\.\\.B"}, {"value": "X"}],
        "rpc_methods": [{"arguments": []}], "downlinkConverter": {"type": "json"}}]});
    let (_, d) = read(&bad);
    let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "mapping[0].attributes_updates[0].value: `A\\.\\.B` has an empty element",
            "mapping[0].attributes_updates[1].key: required",
            "mapping[0].rpc_methods[0].method: required",
            "mapping[0].downlinkConverter.type: `json` is not an OPC-UA converter; expected opcua or custom",
        ]
    );
}

#[test]
fn the_older_format_is_read_as_the_adapter_reads_it() {
    let doc: Value = serde_json::from_str(include_str!("python-sample-old.json")).unwrap();
    let (c, d) = read(&doc);
    assert_eq!(d.errors, vec![], "{d:?}");
    let c = c.unwrap();
    // disableSubscriptions: true; a scan period below a second is a second.
    assert!(!c.server.subscriptions);
    assert_eq!(c.server.scan_period, Duration::from_secs(1));
    let m = &c.mappings[0];
    assert_eq!(m.device_name.0, vec![Part::Text("G OPCUA".into())]);
    assert_eq!(m.keys.len(), 4);
    assert_eq!(m.keys[0].key, "/FileSystem/FileSystemFileCountLimit");
    assert_eq!(m.keys[0].source, Source::Node(NodeRef::Id(NodeId::new(80, "FileSystemFileCountLimit"))));
    assert_eq!(m.keys[2].source, Source::Node(NodeRef::Id(NodeId::new(3, 25u32))));
    assert!(d.notices.iter().any(|n| n.path == "mapping[0].converter"), "{d:?}");
}

#[test]
fn sub_second_polls_node_ids_constants_and_timestamps() {
    let doc = json!({
        "server": {"url": "127.0.0.1:4840", "pollPeriodInMillis": 250, "identity": {"type": "username", "username": "op", "password": "s3cret"}},
        "mapping": [{
            "deviceNodeSource": "identifier", "deviceNodePattern": "ns=2;s=Line 1",
            "deviceInfo": {"deviceNameExpression": "Line ${ns=2;i=7}", "deviceNameExpressionSource": "identifier",
                           "deviceProfileExpression": "${Profile}", "deviceProfileExpressionSource": "path"},
            "attributes": [{"key": "site", "type": "constant", "value": "Plant A"}],
            "timeseries": [
                {"key": "speed", "type": "identifier", "value": "${ns=2;i=1234}", "timestampLocation": "SourceTimestamp"},
                {"key": "level", "type": "path", "value": "${Tank\\.2:Füllstand %}", "reportStrategy": {"type": "ON_CHANGE"}}
            ]
        }]
    });
    let (c, d) = read(&doc);
    assert_eq!(d.errors, vec![], "{d:?}");
    let c = c.unwrap();
    assert_eq!(c.server.url, "opc.tcp://127.0.0.1:4840");
    assert_eq!(c.server.poll_period, Duration::from_millis(250));
    assert_eq!(c.server.identity, Identity::UserName { user: "op".into(), password: "s3cret".into() });
    let m = &c.mappings[0];
    assert_eq!(m.device_node, NodeRef::Id(NodeId::new(2, "Line 1")));
    assert_eq!(m.device_name.nodes().count(), 1);
    assert_eq!(m.keys[0].source, Source::Constant("Plant A".into()));
    assert_eq!((m.keys[1].timestamp, m.keys[2].timestamp), ("source", "gateway"));
    assert_eq!(
        m.keys[2].source,
        Source::Node(NodeRef::Path { absolute: false, elements: vec![el(None, "Tank"), el(Some(2), "Füllstand %")] })
    );
    assert!(c.route_decls[0].report.keys.contains_key("level"));
}

#[test]
fn mistakes_are_named_by_their_field() {
    let e = errors(json!({"mapping": []}));
    assert!(e.iter().any(|e| e.starts_with("server: required")), "{e:?}");
    let e = errors(json!({
        "server": {"url": "opc.tcp://h:4840", "identity": {"type": "cert.PEM"}, "pollPeriodInMillis": -5},
        "mapping": [{
            "deviceNodeSource": "identifier", "deviceNodePattern": "ns=2;q=1", "deviceInfo": {},
            "timeseries": [{"key": "t", "type": "magic", "value": "x"}, {"type": "path", "value": "${A\\.\\.B}"}]
        }]
    }));
    let has = |prefix: &str| e.iter().any(|e| e.starts_with(prefix));
    assert!(has("server.identity.cert: required for a certificate identity"), "{e:?}");
    assert!(has("server.identity.privateKey: required for a certificate identity"), "{e:?}");
    assert!(has("server.pollPeriodInMillis: expected a whole number"), "{e:?}");
    assert!(has("mapping[0].deviceNodePattern: `ns=2;q=1` is not a NodeId"), "{e:?}");
    assert!(has("mapping[0].deviceInfo.deviceNameExpression: required"), "{e:?}");
    assert!(has("mapping[0].timeseries[0].type: `magic`"), "{e:?}");
    assert!(has("mapping[0].timeseries[1].key: required"), "{e:?}");
    assert!(has("mapping[0].timeseries[1].value: `A\\.\\.B` has an empty element"), "{e:?}");
    let e = errors(json!({"server": {"url": "h", "pollPeriod": 5}, "mapping": []}));
    assert!(e.iter().any(|e| e.starts_with("server.pollPeriod:")), "{e:?}");
}

#[test]
fn mappings_of_one_shape_share_a_route() {
    let m = |d: usize, report: Option<Value>| {
        let mut m = json!({"deviceNodePattern": format!("Root\\.Objects\\.Boiler {d}"),
                           "deviceInfo": {"deviceNameExpression": format!("Boiler {d}")},
                           "timeseries": [{"key": "t", "type": "path", "value": "${T}"}]});
        if let Some(r) = report {
            m["reportStrategy"] = r;
        }
        m
    };
    let doc = json!({"server": {"url": "opc.tcp://h:4840"},
                     "mapping": [m(1, None), m(2, None), m(3, Some(json!({"type": "ON_CHANGE"}))), m(4, None)]});
    let (c, d) = read(&doc);
    assert_eq!(d.errors, vec![], "{d:?}");
    let c = c.unwrap();
    // One set of converter instances for the hundred boilers of a plant;
    // a mapping with its own report strategy has its own route.
    assert_eq!(c.route_decls.len(), 2);
    assert_eq!(c.mapping_routes, vec![0, 0, 1, 0]);
}

#[test]
fn certificate_identities_open_a_secure_channel_with_a_trust_list() {
    let dir = std::env::temp_dir().join(format!("tbgw-opcua-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["client.pem", "client.key", "server.der"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    let read_in = |server: Value| {
        let doc = json!({"server": server, "mapping": []});
        let mut d = Diagnostics::default();
        let c = parse(&doc, &Site { name: "PLC 1", base_dir: &dir }, &mut d);
        (c, d)
    };
    // The Python gateway's shape: the policy beside the identity.
    let (c, d) = read_in(json!({"url": "opc.tcp://h:4840", "security": "Aes256Sha256RsaPss",
        "identity": {"type": "cert.PEM", "cert": "client.pem", "privateKey": "client.key", "caCert": "server.der",
                     "mode": "Sign", "username": "op", "password": "pw"}}));
    assert_eq!(d.errors, vec![], "{d:?}");
    let s = c.unwrap().server;
    let ch = s.channel.expect("a channel");
    assert_eq!((ch.policy, ch.mode), (SecurityPolicy::Aes256Sha256RsaPss, MessageSecurityMode::Sign));
    assert_eq!((ch.certificate, ch.server_certificate), (dir.join("client.pem"), Some(dir.join("server.der"))));
    assert_eq!(ch.pki_dir, dir.join("opcua-pki").join("PLC_1"));
    assert!(!ch.trust_on_first_use);
    assert_eq!(s.identity, Identity::UserName { user: "op".into(), password: "pw".into() });
    assert!(!format!("{:?}", s.identity).contains("pw"), "a password in a Debug");
    // x509: the certificate is the login too; the default policy and mode.
    let (c, d) = read_in(json!({"url": "opc.tcp://h:4840", "pkiDir": "pki",
        "identity": {"type": "x509", "pathToClientCert": "client.pem", "pathToPrivateKey": "client.key",
                     "trustOnFirstUse": true}}));
    assert_eq!(d.errors, vec![], "{d:?}");
    let s = c.unwrap().server;
    let ch = s.channel.expect("a channel");
    assert_eq!((ch.policy, ch.mode), (SecurityPolicy::Basic256Sha256, MessageSecurityMode::SignAndEncrypt));
    assert_eq!((ch.pki_dir, ch.trust_on_first_use, s.identity), (dir.join("pki"), true, Identity::X509));
    // Mistakes, by field.
    let (_, d) = read_in(json!({"url": "opc.tcp://h:4840", "security": "Basic512",
        "identity": {"type": "cert.PEM", "cert": "missing.pem", "privateKey": "client.key", "mode": "Encrypt"}}));
    let e: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert!(e.iter().any(|e| e.starts_with("server.security: `Basic512`: expected Basic256Sha256")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("server.identity.mode: `Encrypt`")), "{e:?}");
    assert!(e.contains(&format!("server.identity.cert: no file {}", dir.join("missing.pem").display())), "{e:?}");
    // A policy without a certificate identity says it does nothing.
    let (c, d) = read_in(json!({"url": "opc.tcp://h:4840", "security": "Basic256Sha256"}));
    assert!(c.unwrap().server.channel.is_none());
    assert!(d.notices.iter().any(|n| n.to_string().starts_with("server.security: Basic256Sha256 applies to")));
    let _ = std::fs::remove_dir_all(&dir);
}
