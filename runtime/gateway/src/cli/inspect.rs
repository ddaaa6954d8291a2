//! `tbgw converter inspect`: which converter world a component implements,
//! built against which contract version, and what tbgw gives each of its
//! imports.

use super::{OK, Out, RuntimeArgs, SOME_FAILED, fail};
use std::process::ExitCode;
use tbgw_core::Direction;
use tbgw_wasm::{CONTRACT_PACKAGE, CONTRACT_VERSIONS, ComponentSource, ImportStatus, is_supported};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The path of a .wasm component, or a built-in converter name.
    pub component: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(args: Args) -> ExitCode {
    let source = match tbgw_guests::BUILTINS.iter().find(|b| b.name == args.component) {
        Some(b) if !args.component.ends_with(".wasm") => ComponentSource::Builtin { name: b.name, wasm: b.wasm },
        _ => ComponentSource::File(args.component.clone().into()),
    };
    let runtime = match args.runtime.runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    // A built-in name covers both directions: inspect each.
    let sources: Vec<ComponentSource> = match &source {
        ComponentSource::Builtin { name, .. } => tbgw_guests::BUILTINS
            .iter()
            .filter(|b| b.name == *name)
            .map(|b| ComponentSource::Builtin { name: b.name, wasm: b.wasm })
            .collect(),
        other => vec![other.clone()],
    };
    let mut any_converter = false;
    let mut out = Out::new();
    for source in &sources {
        let inspection = match runtime.inspect(source) {
            Ok(i) => i,
            Err(e) => return fail(&e.to_string().replace("converter `inspect`: ", "")),
        };
        any_converter |= !inspection.worlds.is_empty();
        if args.json {
            let worlds: Vec<serde_json::Value> = inspection
                .worlds
                .iter()
                .map(|(d, v)| serde_json::json!({"world": d.world(), "version": v, "supported": is_supported(v)}))
                .collect();
            let imports: Vec<serde_json::Value> = inspection
                .imports
                .iter()
                .map(|i| {
                    let (status, note) = status(i.status);
                    serde_json::json!({"name": i.name, "status": status, "note": note})
                })
                .collect();
            let doc = serde_json::json!({
                "component": source.describe(),
                "sha256": inspection.sha256,
                "size": inspection.size,
                "implements": worlds,
                "exports": inspection.exports,
                "imports": imports,
            });
            out.line(doc);
            continue;
        }
        out.line(format!("component:  {}", source.describe()));
        out.line(format!("sha256:     {}", inspection.sha256));
        out.line(format!("size:       {} bytes", inspection.size));
        if inspection.worlds.is_empty() {
            out.line(format!("implements: no converter world of {CONTRACT_PACKAGE}"));
        }
        for (direction, version) in &inspection.worlds {
            let note = if is_supported(version) {
                "supported".to_owned()
            } else {
                let served: Vec<String> = CONTRACT_VERSIONS.iter().map(|v| format!("{v}.x")).collect();
                format!("NOT supported: this tbgw implements {CONTRACT_PACKAGE} {}", served.join(" and "))
            };
            let use_as = match direction {
                Direction::Uplink => "uplink",
                Direction::Downlink => "downlink",
            };
            out.line(format!(
                "implements: {} ({CONTRACT_PACKAGE}@{version}, {note}; an {use_as} converter)",
                direction.world()
            ));
        }
        out.line("exports:");
        for e in &inspection.exports {
            out.line(format!("  {e}"));
        }
        out.line("imports:");
        let width = inspection.imports.iter().map(|i| i.name.len()).max().unwrap_or(0);
        for i in &inspection.imports {
            let (status, note) = status(i.status);
            out.line(format!("  {:width$}  {status}: {note}", i.name));
        }
        if sources.len() > 1 {
            out.line("");
        }
    }
    ExitCode::from(if any_converter { OK } else { SOME_FAILED })
}

fn status(s: ImportStatus) -> (&'static str, &'static str) {
    match s {
        ImportStatus::Provided(note) => ("provided", note),
        ImportStatus::Denied(note) => ("denied", note),
        ImportStatus::Missing => ("missing", "not provided by tbgw: calling it traps"),
    }
}
