//! `tbgw dead-letters list|replay|purge`: the messages the gateway kept
//! because they failed to convert ([`tbgw_store::dead_letters`]).
//!
//! They are in the gateway's fjall store, which one process opens at a
//! time: these commands run while the gateway is stopped, and say so when
//! it is not. `replay` converts each letter again with the converter its
//! route has in the configuration *now* (so: fix the converter, swap it in,
//! stop the gateway, replay) and stores the events, which the gateway
//! delivers at its next start; a letter that converts is removed, one that
//! still fails stays, with its new reason printed. A converter uploaded
//! from ThingsBoard ([`tbgw::uploads`]) replays with its uploaded version,
//! as the gateway would convert.

use super::{OK, Out, SOME_FAILED, UNUSABLE, fail};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tbgw::config::{GatewayConfig, StorageKind};
use tbgw::pipeline::{has_values, stamp};
use tbgw::service;
use tbgw_core::{Event, hex};
use tbgw_store::{DeadLetter, EventStore, FjallStore};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show the dead letters, oldest first.
    List(ListArgs),
    /// Convert dead letters again with the configured converters; store
    /// the events of those that convert and remove them.
    Replay(SelectArgs),
    /// Remove dead letters for good.
    Purge(SelectArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The gateway configuration (tb_gateway.json or .yaml).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// One JSON object per line, payload in base16 and as text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SelectArgs {
    /// The gateway configuration (tb_gateway.json or .yaml).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Only these letters (by the id `list` shows); all of them without.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<u64>,
}

pub fn run(command: Command) -> ExitCode {
    match command {
        Command::List(a) => list(a),
        Command::Replay(a) => replay(a),
        Command::Purge(a) => purge(a),
    }
}

fn open(config: &std::path::Path) -> Result<(GatewayConfig, FjallStore), ExitCode> {
    let config = match tbgw::config::load(config) {
        Ok((c, _)) => c,
        Err(d) => {
            for e in &d.errors {
                eprintln!("error: {}: {e}", config.display());
            }
            return Err(ExitCode::from(UNUSABLE));
        }
    };
    let StorageKind::Fjall { path, durability } = &config.storage.kind else {
        return Err(fail("the memory storage keeps no dead letters beyond a run: there are none to read"));
    };
    match FjallStore::open(path, config.storage.limits, *durability) {
        Ok(store) => Ok((config, store)),
        Err(e) => Err(fail(&format!("{e} (is the gateway running? stop it first: one process opens a store)"))),
    }
}

/// Every letter (or the chosen ones), oldest first.
fn letters(store: &FjallStore, ids: &[u64]) -> Result<Vec<(u64, DeadLetter)>, ExitCode> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = store.dead_letters(from, 1000).map_err(|e| fail(&e.to_string()))?;
        let Some(last) = page.last().map(|(id, _)| *id) else { break };
        out.extend(page.into_iter().filter(|(id, _)| ids.is_empty() || ids.contains(id)));
        from = last + 1;
    }
    if let Some(missing) = ids.iter().find(|id| !out.iter().any(|(i, _)| i == *id)) {
        return Err(fail(&format!("there is no dead letter {missing} (tbgw dead-letters list shows them)")));
    }
    Ok(out)
}

fn shown_payload(payload: &[u8]) -> String {
    let text = match std::str::from_utf8(payload) {
        Ok(t) => format!("{t:?}"),
        Err(_) => format!("0x{}", hex(payload)),
    };
    if text.len() > 200 {
        format!("{}... ({} bytes)", &text[..text.floor_char_boundary(200)], payload.len())
    } else {
        text
    }
}

fn list(args: ListArgs) -> ExitCode {
    let (_, store) = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let all = match letters(&store, &[]) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let stats = store.stats();
    let mut out = Out::new();
    for (id, l) in &all {
        if args.json {
            out.line(serde_json::json!({
                "id": id,
                "failedAt": l.failed_at,
                "connector": l.connector,
                "route": l.route,
                "converter": l.converter,
                "sha256": l.converter_sha256,
                "reason": l.reason,
                "source": l.raw.source.to_string(),
                "device": l.raw.device,
                "receivedAt": l.raw.received_at,
                "payloadHex": hex(&l.raw.payload),
                "payload": String::from_utf8_lossy(&l.raw.payload),
            }));
        } else {
            let age = (tbgw_core::now_ms() - l.failed_at).max(0) / 1000;
            out.line(format!(
                "#{id}  {age} s ago  {}  {}  {} ({})\n    {}  {}\n    {}",
                l.connector,
                l.route,
                l.converter,
                l.converter_sha256.get(..12).unwrap_or(&l.converter_sha256),
                l.raw.source,
                shown_payload(&l.raw.payload),
                l.reason
            ));
        }
    }
    if !args.json {
        eprintln!(
            "{} dead letter(s){}",
            all.len(),
            if stats.dead_letters_dropped > 0 {
                format!(", {} dropped at the bound since the store opened", stats.dead_letters_dropped)
            } else {
                String::new()
            }
        );
    }
    ExitCode::from(OK)
}

fn replay(args: SelectArgs) -> ExitCode {
    let (config, store) = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let chosen = match letters(&store, &args.ids) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if chosen.is_empty() {
        eprintln!("no dead letters");
        return ExitCode::from(OK);
    }
    let runtime = match tbgw::converters::runtime(service::cache_dir(&config)) {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let loaded = match service::load(&config, &runtime) {
        Ok(l) => l,
        Err(e) => return fail(&e.to_string()),
    };
    // The versions the gateway serves: uploaded ones included.
    if let Some(dir) = &config.uploads
        && let Err(e) = tbgw::uploads::put_back(dir, &loaded.registry)
    {
        return fail(&e.to_string());
    }
    let routes: HashMap<(&str, &str), usize> =
        loaded.routes.iter().enumerate().map(|(i, r)| ((&*r.connector, r.origin.as_str()), i)).collect();
    // Replayed events go into the store the gateway delivers from; a full
    // store would block (or drop undelivered events): refuse instead.
    let (limits, stats) = (config.storage.limits, store.stats());
    if stats.records + chosen.len() as u64 > limits.max_records || stats.bytes + (1 << 20) > limits.max_bytes {
        return fail(&format!(
            "the store holds {} events ({} bytes) of at most {} ({} bytes): no room to replay {} letters; \
             start the gateway to deliver the backlog first",
            stats.records,
            stats.bytes,
            limits.max_records,
            limits.max_bytes,
            chosen.len()
        ));
    }
    let mut workers = HashMap::new();
    let (mut replayed, mut failed) = (0, 0);
    let mut out = Out::new();
    for (id, letter) in chosen {
        let Some(&r) = routes.get(&(letter.connector.as_str(), letter.route.as_str())) else {
            failed += 1;
            out.line(format!(
                "#{id}: left: the configuration has no route {} in connector {} any more",
                letter.route, letter.connector
            ));
            continue;
        };
        let route = &loaded.routes[r];
        let worker = workers.entry(r).or_insert_with(|| route.converter.worker());
        let result = worker.convert(std::slice::from_ref(&letter.raw)).pop();
        match result {
            Some(Ok(converted)) => {
                let events: Vec<Event> = converted
                    .updates
                    .into_iter()
                    .filter_map(|mut update| {
                        stamp(&mut update, letter.raw.received_at);
                        has_values(&mut update).then(|| Event::new(letter.connector.clone(), update))
                    })
                    .collect();
                if let Err(e) = store.append(&events).and_then(|_| store.remove_dead_letters(&[id])) {
                    return fail(&format!("storing the events of dead letter {id}: {e}"));
                }
                replayed += 1;
                out.line(format!("#{id}: replayed: {} event(s) stored for delivery", events.len()));
            }
            Some(Err(e)) => {
                failed += 1;
                out.line(format!("#{id}: still fails: {e}"));
            }
            None => {
                failed += 1;
                out.line(format!("#{id}: still fails: the converter gave no result"));
            }
        }
    }
    if let Err(e) = store.flush() {
        return fail(&format!("flushing the store: {e}"));
    }
    eprintln!("{replayed} replayed (delivered at the gateway's next start), {failed} left");
    ExitCode::from(if failed > 0 { SOME_FAILED } else { OK })
}

fn purge(args: SelectArgs) -> ExitCode {
    let (_, store) = match open(&args.config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let chosen = match letters(&store, &args.ids) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let ids: Vec<u64> = chosen.iter().map(|(id, _)| *id).collect();
    if let Err(e) = store.remove_dead_letters(&ids).and_then(|()| store.flush()) {
        return fail(&e.to_string());
    }
    eprintln!("{} dead letter(s) removed", ids.len());
    ExitCode::from(OK)
}
