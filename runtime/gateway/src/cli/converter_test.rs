//! `tbgw converter test`: run a converter on sample messages and print what
//! ThingsBoard would receive, one JSON object per device update (or, for a
//! downlink converter, per message to the device) per line on stdout.
//! Dropped values and failed messages go to stderr with their line number.

use super::{OK, Out, RuntimeArgs, SOME_FAILED, fail};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tbgw::converters;
use tbgw_core::setup::LimitsDecl;
use tbgw_core::{BleCharacteristic, CanFrame, Direction, OpcuaValue, RawUplink, RegisterBlock, Source, now_ms};
use tbgw_wasm::{ConverterSpec, LoadError, MessageError};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A built-in converter (`json`, `modbus`, `can`, `opcua`, `ble`) or the path of a .wasm component.
    pub converter: String,
    /// The converter's config, a JSON file. For `json`: the `converter`
    /// object of a ThingsBoard gateway MQTT mapping (uplink), or its
    /// `requestsMapping` (downlink).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The messages: one JSON document, or JSON Lines (one message per
    /// line). `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Where the messages came from: an MQTT topic, or `node:NODE-ID`,
    /// `characteristic:UUID`, `can:ID` (`can:ID:ext` for an extended id
    /// under 0x800), `registers:UNIT:FUNCTION:ADDRESS:COUNT`
    /// (`topic:TEXT` for a topic that starts like those).
    #[arg(long, value_name = "TEXT")]
    pub source: Option<String>,
    /// The device the connector knows the messages are from (a Modbus
    /// slave's `deviceName`).
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// Metadata for every message (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// Test a downlink converter: the input holds ThingsBoard requests, as
    /// published on v1/gateway/rpc (`{"device":..,"data":{"id":..,"method":..,"params":..}}`)
    /// and v1/gateway/attributes (`{"device":..,"data":{"key":value}}`).
    #[arg(long)]
    pub downlink: bool,
    /// Each input line is a binary payload written in hex (`00d7 0002`,
    /// spaces allowed): for register blocks, CAN frames, BLE values.
    #[arg(long, conflicts_with = "downlink")]
    pub hex: bool,
    /// Receipt time of the messages, ms since the epoch [default: now].
    #[arg(long, value_name = "MS")]
    pub received_at: Option<i64>,
    /// How long one message may take, in milliseconds (`limits.timeoutMs`
    /// in a config): a call of N messages may take 100 ms + N times this
    /// [default: as in a config, 10].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: Option<u64>,
    /// Memory limit of the converter instance, in MiB (`limits.memoryMib`)
    /// [default: as in a config, 64].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub memory_mib: Option<u64>,
    /// Messages per convert call, at most [default: as the gateway's
    /// pipeline batches, `tbgw.maxBatch`'s default].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

pub fn run(args: Args) -> ExitCode {
    let direction = if args.downlink { Direction::Downlink } else { Direction::Uplink };
    let config = match read_config(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let input = match read_input(&args.input) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    let messages = split_messages(&input);
    if messages.is_empty() {
        return fail(&format!("--input {}: no messages", args.input.display()));
    }
    let binary: Vec<(usize, Vec<u8>)> = if args.hex {
        match messages
            .iter()
            .map(|(line, text)| tbgw_core::unhex(text).map(|b| (*line, b)).map_err(|e| format!("line {line}: {e}")))
            .collect()
        {
            Ok(b) => b,
            Err(e) => return fail(&format!("--input {}: {e}", args.input.display())),
        }
    } else {
        messages.iter().map(|(line, text)| (*line, text.to_vec())).collect()
    };
    let source = match args.source.as_deref().map(parse_source).transpose() {
        Ok(s) => s.unwrap_or(Source::None),
        Err(e) => return fail(&format!("--source: {e}")),
    };
    let component = match converters::resolve(&args.converter, direction, None) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let name = Path::new(&args.converter).file_stem().and_then(|s| s.to_str()).unwrap_or(&args.converter).to_owned();
    let limits = converters::limits(LimitsDecl { timeout_ms: args.timeout_ms, memory_mib: args.memory_mib });
    let spec = ConverterSpec { component, config, limits };
    let runtime = match args.runtime.runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let hint = |e: LoadError| {
        let mut msg = e.to_string();
        if let LoadError::WrongWorld { .. } = e {
            msg.push_str(if args.downlink {
                " (drop --downlink to test an uplink converter)"
            } else {
                " (add --downlink to test a downlink converter)"
            });
        }
        fail(&msg)
    };
    let batch = args.batch.map_or(tbgw::pipeline::PipelineConfig::default().max_batch, |b| b as usize);
    let mut out = Out::new();
    let failed = match direction {
        Direction::Uplink => {
            let converter = match runtime.uplink(&name, spec) {
                Ok(c) => c,
                Err(e) => return hint(e),
            };
            let received_at = args.received_at.unwrap_or_else(now_ms);
            let uplinks: Vec<RawUplink> = binary
                .iter()
                .map(|(_, payload)| RawUplink {
                    source: source.clone(),
                    device: args.device.clone(),
                    payload: payload.clone(),
                    metadata: args.metadata.clone(),
                    received_at,
                })
                .collect();
            let mut worker = converter.worker();
            let mut failed = 0;
            for (chunk, lines) in uplinks.chunks(batch).zip(messages.chunks(batch)) {
                for (result, (line, _)) in worker.convert(chunk).into_iter().zip(lines) {
                    match result {
                        Ok(converted) => {
                            for update in &converted.updates {
                                out.line(tbgw_core::device_update_json(update));
                            }
                            for d in &converted.dropped {
                                eprintln!("line {line}: dropped `{}`: {}", d.key, d.reason);
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("line {line}: {}", message_error(&e));
                        }
                    }
                }
            }
            failed
        }
        Direction::Downlink => {
            let converter = match runtime.downlink(&name, spec) {
                Ok(c) => c,
                Err(e) => return hint(e),
            };
            let mut failed = 0;
            let mut requests = Vec::new();
            for (line, payload) in &messages {
                match tbgw_thingsboard::codec::parse_request(payload) {
                    Ok(r) => requests.push((*line, r)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("line {line}: not a ThingsBoard request: {e}");
                    }
                }
            }
            let mut worker = converter.worker();
            for chunk in requests.chunks(batch) {
                let batch: Vec<_> = chunk.iter().map(|(_, r)| r.clone()).collect();
                for (result, (line, _)) in worker.convert(&batch).into_iter().zip(chunk) {
                    match result {
                        Ok(messages) => {
                            for m in &messages {
                                out.line(tbgw_core::downlink_message_json(m));
                            }
                            if messages.is_empty() {
                                eprintln!("line {line}: no message for the device");
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("line {line}: {}", message_error(&e));
                        }
                    }
                }
            }
            failed
        }
    };
    ExitCode::from(if failed > 0 { SOME_FAILED } else { OK })
}

/// The converter's own words for a rejected message; the full error otherwise.
fn message_error(e: &MessageError) -> String {
    match e {
        MessageError::Rejected { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn read_config(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| format!("--config {}: not valid JSON: {e}", path.display()))?;
    Ok(text)
}

fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("--input -: {e}"))?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(|e| format!("--input {}: {e}", path.display()))
}

/// One message when the whole input is one JSON document (pretty-printed or
/// not); otherwise one message per non-blank line. Each comes with the line
/// it starts on.
fn split_messages(input: &[u8]) -> Vec<(usize, &[u8])> {
    let start = input.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(input.len());
    if start == input.len() {
        return Vec::new();
    }
    let first_line = input[..start].iter().filter(|b| **b == b'\n').count() + 1;
    if serde_json::from_slice::<serde::de::IgnoredAny>(input).is_ok() {
        return vec![(first_line, input.trim_ascii())];
    }
    input
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .collect()
}

fn parse_source(text: &str) -> Result<Source, String> {
    let (kind, rest) = text.split_once(':').unwrap_or(("", text));
    Ok(match kind {
        "topic" => Source::mqtt(rest),
        "node" => Source::Opcua(OpcuaValue { node: rest.to_owned(), status: 0, source_time: None, server_time: None }),
        "characteristic" => Source::Characteristic(BleCharacteristic {
            address: String::new(),
            service: String::new(),
            characteristic: rest.to_owned(),
        }),
        "can" => {
            // `can:0x77E:ext`: an extended id that would fit 11 bits.
            let (rest, ext) = match rest.strip_suffix(":ext") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let id = parse_int(rest).ok_or_else(|| format!("`{rest}` is not a CAN id"))?;
            let id = u32::try_from(id)
                .ok()
                .filter(|id| *id < 1 << 29)
                .ok_or_else(|| format!("CAN id {id} is over 29 bits"))?;
            Source::Can(CanFrame { id, extended: ext || id > 0x7ff, ..CanFrame::default() })
        }
        "registers" => {
            let parts: Vec<Option<u64>> = rest.split(':').map(parse_int).collect();
            match parts.as_slice() {
                [Some(unit), Some(fc), Some(addr), Some(count)]
                    if *unit <= 255 && *fc <= 255 && *addr <= 65535 && *count <= 65535 =>
                {
                    Source::Registers(RegisterBlock {
                        unit_id: *unit as u8,
                        function_code: *fc as u8,
                        address: *addr as u16,
                        count: *count as u16,
                    })
                }
                _ => return Err(format!("`{rest}` is not UNIT:FUNCTION:ADDRESS:COUNT")),
            }
        }
        _ => Source::mqtt(text),
    })
}

fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document_or_json_lines() {
        let pretty = b"\n\n{\n  \"a\": 1\n}\n";
        assert_eq!(split_messages(pretty), vec![(3, &b"{\n  \"a\": 1\n}"[..])]);
        let lines = b"{\"a\":1}\n\n{\"a\":2}\r\nnot json\n";
        let got: Vec<(usize, &[u8])> = split_messages(lines);
        assert_eq!(got, vec![(1, &b"{\"a\":1}"[..]), (3, &b"{\"a\":2}"[..]), (4, &b"not json"[..])]);
        assert!(split_messages(b"  \n ").is_empty());
    }

    #[test]
    fn sources() {
        assert_eq!(parse_source("sensor/1/data"), Ok(Source::mqtt("sensor/1/data")));
        assert_eq!(parse_source("topic:node:x"), Ok(Source::mqtt("node:x")));
        assert!(matches!(parse_source("node:ns=2;s=T"), Ok(Source::Opcua(o)) if o.node == "ns=2;s=T"));
        let can = |id, extended| Ok(Source::Can(CanFrame { id, extended, ..CanFrame::default() }));
        assert_eq!(parse_source("can:0x18FF50E5"), can(0x18FF50E5, true));
        assert_eq!(parse_source("can:0x123"), can(0x123, false));
        assert_eq!(parse_source("can:0x77E:ext"), can(0x77E, true));
        assert_eq!(
            parse_source("registers:1:3:100:2"),
            Ok(Source::Registers(RegisterBlock { unit_id: 1, function_code: 3, address: 100, count: 2 }))
        );
        assert!(parse_source("registers:1:3").is_err());
        assert!(parse_source("can:zz").is_err());
    }
}
