//! A downlink converter as contract 0.1.0 had them: a message's target is a
//! string (the MQTT topic) and how to send it is metadata (`qos`, `retain`,
//! and for a two-way RPC `response-topic`, `response-timeout-ms`); there is
//! no `reply`. tbgw 0.2 serves it as MQTT publishes and replies with the
//! device's answer as it is.
//!
//! An RPC goes to `rpc/<device>/<method>` with its params as the payload;
//! a method starting with `ask` waits for the answer on
//! `rpc/<device>/answer/<id>` (2 s). An attribute update goes to
//! `attr/<device>` as `key=value` lines.

wit_bindgen::generate!({ path: "../../../wit/0.1.0", world: "downlink-converter" });

use exports::tbgw::converter::downlink::{Converter, Guest, GuestConverter};
use tbgw::converter::types::{ConfigError, ConvertError, DownlinkMessage, DownlinkRequest, Value};

struct Component;

export!(Component);

impl Guest for Component {
    type Converter = Legacy;
}

struct Legacy;

impl GuestConverter for Legacy {
    fn create(_config: String) -> Result<Converter, ConfigError> {
        Ok(Converter::new(Legacy))
    }

    fn convert(&self, batch: Vec<DownlinkRequest>) -> Vec<Result<Vec<DownlinkMessage>, ConvertError>> {
        batch
            .into_iter()
            .map(|request| match request {
                DownlinkRequest::Rpc(rpc) => {
                    let mut metadata = vec![("qos".to_owned(), "1".to_owned())];
                    if rpc.method.starts_with("ask") {
                        metadata.push(("response-topic".into(), format!("rpc/{}/answer/{}", rpc.device, rpc.id)));
                        metadata.push(("response-timeout-ms".into(), "2000".into()));
                    }
                    Ok(vec![DownlinkMessage {
                        target: format!("rpc/{}/{}", rpc.device, rpc.method),
                        payload: rpc.params.into_bytes(),
                        metadata,
                    }])
                }
                DownlinkRequest::AttributeUpdate(update) => {
                    let lines: Vec<String> = update
                        .entries
                        .iter()
                        .map(|e| {
                            let v = match &e.value {
                                Value::Boolean(b) => b.to_string(),
                                Value::Integer(i) => i.to_string(),
                                Value::Double(f) => f.to_string(),
                                Value::Text(s) | Value::Json(s) => s.clone(),
                            };
                            format!("{}={v}", e.key)
                        })
                        .collect();
                    Ok(vec![DownlinkMessage {
                        target: format!("attr/{}", update.device),
                        payload: lines.join("\n").into_bytes(),
                        metadata: vec![("retain".into(), "true".into())],
                    }])
                }
            })
            .collect()
    }
}
