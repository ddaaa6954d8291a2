//! Every example in `config/` loads: a user who copies one starts from a
//! config that works.

use std::path::PathBuf;
use tbgw_core::Direction;
use tbgw_wasm::{ConverterSpec, Limits, Runtime, RuntimeConfig};

#[test]
fn every_example_converter_config_loads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/converters");
    let rt = Runtime::new(RuntimeConfig { max_instances: 8, ..RuntimeConfig::default() }).expect("runtime");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/converters") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let direction = if name.ends_with("-uplink.json") {
            Direction::Uplink
        } else if name.ends_with("-downlink.json") {
            Direction::Downlink
        } else {
            panic!("{name}: name converter configs <converter>-uplink.json or <converter>-downlink.json");
        };
        let converter = name.split('-').next().unwrap_or_default();
        let spec = ConverterSpec {
            component: tbgw::converters::resolve(converter, direction, None).expect("a built-in converter"),
            config: std::fs::read_to_string(&path).expect("read"),
            limits: Limits::default(),
        };
        let loaded = match direction {
            Direction::Uplink => rt.uplink(&name, spec).map(|_| ()),
            Direction::Downlink => rt.downlink(&name, spec).map(|_| ()),
        };
        if let Err(e) = loaded {
            panic!("{}: {e}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 2, "found only {checked} example configs");
}
