//! Shared set-up for the runtime's tests: a runtime sized for tests and
//! specs for the compiled test guests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;
use tbgw_core::{RawUplink, Source};
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, Runtime, RuntimeConfig};

pub fn runtime() -> Runtime {
    runtime_with_cache(None)
}

pub fn runtime_with_cache(cache_dir: Option<PathBuf>) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir,
        max_instances: 32,
        max_memory_bytes: 256 * 1024 * 1024,
        epoch_tick: Duration::from_millis(2),
        perf_map: false,
    })
    .expect("runtime")
}

/// The probe test guest with `config`.
pub fn probe(config: &str) -> ConverterSpec {
    ConverterSpec {
        component: ComponentSource::File(tbgw_guests::PROBE.into()),
        config: config.into(),
        limits: Limits::default(),
    }
}

pub fn json_uplink(config: &str) -> ConverterSpec {
    ConverterSpec {
        component: ComponentSource::Builtin { name: "json", wasm: tbgw_guests::JSON_UPLINK },
        config: config.into(),
        limits: Limits::default(),
    }
}

pub fn json_downlink(config: &str) -> ConverterSpec {
    ConverterSpec {
        component: ComponentSource::Builtin { name: "json", wasm: tbgw_guests::JSON_DOWNLINK },
        config: config.into(),
        limits: Limits::default(),
    }
}

/// A message on topic `t` with `payload`.
pub fn msg(payload: &str) -> RawUplink {
    RawUplink {
        source: Source::mqtt("t"),
        device: None,
        payload: payload.as_bytes().to_vec(),
        metadata: vec![],
        received_at: 1_700_000_000_000,
    }
}

pub fn batch(payloads: &[&str]) -> Vec<RawUplink> {
    payloads.iter().map(|p| msg(p)).collect()
}
