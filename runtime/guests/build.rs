//! Builds the guest workspace (`guest-converters/`) for `wasm32-wasip2` and
//! exposes the components to this crate: the built-in converters embedded as
//! bytes, with the table that names them ([`BUILTINS`] is the one list of
//! built-in converters), the test guests (feature `test-guests`) as file
//! paths.
//!
//! The pattern of wasmtime's `crates/test-programs/artifacts`: a nested cargo
//! with its own target directory (so the two builds never wait on each
//! other's lock), and `rerun-if-changed` on every source file the guests were
//! built from, read from cargo's dep-info files.

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built-in converters: the name configs use, the direction; each is
/// the guest package `tbgw-<name>-<direction>`, embedded as
/// `<NAME>_<DIRECTION>`. Adding one here is all the host needs.
const BUILTINS: &[(&str, &str)] = &[
    ("json", "uplink"),
    ("json", "downlink"),
    ("modbus", "uplink"),
    ("modbus", "downlink"),
    ("can", "uplink"),
    ("can", "downlink"),
    ("opcua", "uplink"),
    ("opcua", "downlink"),
    ("ble", "uplink"),
    ("ble", "downlink"),
];

/// A guest to build: its package, the const that names it, and for a
/// built-in converter its name and direction.
type Guest = (String, String, Option<(&'static str, &'static str)>);

/// Test guests: (package, const name of its path).
const TEST_GUESTS: &[(&str, &str)] = &[
    ("tbgw-probe", "PROBE"),
    ("tbgw-probe-0-1", "PROBE_V0_1"),
    ("tbgw-downlink-0-1", "DOWNLINK_V0_1"),
    ("tbgw-custom-downlink", "CUSTOM_DOWNLINK"),
    ("tbgw-custom-registers", "CUSTOM_REGISTERS"),
    ("tbgw-echo", "ECHO"),
    ("tbgw-echo-0-1", "ECHO_V0_1"),
    ("tbgw-contract-breaker", "CONTRACT_BREAKER"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guests = manifest_dir.join("../../guest-converters");
    let with_tests = env::var_os("CARGO_FEATURE_TEST_GUESTS").is_some();

    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out: keep the
    // guests' own target directory beside the profile directories, shared by
    // debug and release host builds.
    let target_dir = out_dir.ancestors().nth(4).unwrap_or(&out_dir).join("guest-converters");

    let mut packages: Vec<Guest> = BUILTINS
        .iter()
        .map(|&(name, dir)| (format!("tbgw-{name}-{dir}"), format!("{name}_{dir}").to_uppercase(), Some((name, dir))))
        .collect();
    if with_tests {
        packages.extend(TEST_GUESTS.iter().map(|&(p, c)| (p.to_owned(), c.to_owned(), None)));
    }

    ensure_wasm_target(&guests);

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // The host build's flags and wrappers are not for wasm guests.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_PRIMARY_PACKAGE");
    for (package, _, _) in &packages {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo to build the guest converters: {e}"));
    if !status.success() {
        panic!("building the guest converters in {} failed (see above)", guests.display());
    }

    let built = target_dir.join("wasm32-wasip2").join("release");
    let mut generated = String::new();
    let mut table = String::from("/// Every built-in converter.\npub const BUILTINS: &[Builtin] = &[\n");
    let mut deps = BTreeSet::new();
    for (package, name, builtin) in &packages {
        let stem = package.replace('-', "_");
        let artifact = built.join(format!("{stem}.wasm"));
        let copy = out_dir.join(format!("{stem}.wasm"));
        fs::copy(&artifact, &copy).unwrap_or_else(|e| panic!("{package}: cannot copy {}: {e}", artifact.display()));
        read_deps(&built.join(format!("{stem}.d")), &mut deps);
        match builtin {
            Some((builtin, dir)) => {
                let _ = writeln!(
                    generated,
                    "/// The `{package}` component.\npub const {name}: &[u8] = include_bytes!({:?});",
                    copy.display().to_string()
                );
                let direction = if *dir == "uplink" { "Uplink" } else { "Downlink" };
                let _ = writeln!(
                    table,
                    "    Builtin {{ name: {builtin:?}, direction: Direction::{direction}, wasm: {name} }},"
                );
            }
            None => {
                let _ = writeln!(
                    generated,
                    "/// Path of the `{package}` test component.\npub const {name}: &str = {:?};",
                    copy.display().to_string()
                );
            }
        }
    }
    table.push_str("];\n");
    generated.push_str(&table);
    fs::write(out_dir.join("artifacts.rs"), generated).expect("write artifacts.rs");

    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guests.join(file).display());
    }
    for dep in deps {
        println!("cargo:rerun-if-changed={dep}");
    }
}

/// The guests are built for `wasm32-wasip2`. rustup installs the targets
/// that `rust-toolchain.toml` lists only when it installs the toolchain, so
/// a machine whose Rust 1.95 was there before lacks it, and the guest build
/// would stop with "can't find crate for `core`". Add it with rustup when
/// rustup is there, saying so; otherwise stop with the command to run.
fn ensure_wasm_target(guests: &Path) {
    const TARGET: &str = "wasm32-wasip2";
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let installed = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .and_then(|dir| fs::read_dir(dir).ok())
        .is_some_and(|mut files| {
            files.any(|f| f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with("libcore-")))
        });
    if installed {
        return;
    }
    // The toolchain cargo runs with (rustup's proxies say which).
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok().filter(|t| !t.is_empty());
    let mut add = vec!["target", "add"];
    if let Some(t) = &toolchain {
        add.extend(["--toolchain", t.as_str()]);
    }
    add.push(TARGET);
    let command = format!("rustup {}", add.join(" "));
    let has_rustup = Command::new("rustup").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_rustup {
        panic!(
            "the guest converters are WebAssembly components built for the {TARGET} target, which this Rust \
             toolchain ({}) does not have, and there is no rustup to add it. Install the target for this \
             toolchain (with rustup: `rustup target add {TARGET}`) and build again.",
            rustc.to_string_lossy()
        );
    }
    let message = format!(
        "the {TARGET} target is missing: installing it with `{command}` (the guest converters are built for it)"
    );
    // On stderr now (cargo shows a build script's warnings only when it ends).
    eprintln!("{message}");
    println!("cargo::warning={message}");
    let status = Command::new("rustup").args(&add).current_dir(guests).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`{command}` failed ({s}): run it yourself, then build again"),
        Err(e) => panic!("cannot run `{command}`: {e}"),
    }
}

/// Collect the source files listed in a cargo dep-info (`.d`) file.
fn read_deps(path: &Path, deps: &mut BTreeSet<String>) {
    let Ok(contents) = fs::read_to_string(path) else {
        return;
    };
    for line in contents.lines() {
        let Some((_, files)) = line.split_once(": ") else { continue };
        let mut parts = files.split_whitespace();
        while let Some(part) = parts.next() {
            let mut file = part.to_owned();
            while file.ends_with('\\') {
                file.pop();
                file.push(' ');
                match parts.next() {
                    Some(next) => file.push_str(next),
                    None => break,
                }
            }
            deps.insert(file);
        }
    }
}
