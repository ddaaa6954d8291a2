//! Your converter: edit `create`, `convert` and `reply`.
//!
//! `create` gets the converter's config (the downlink converter's config in
//! mqtt.json, as JSON text) once per instance; return a `ConfigError` that
//! names a field that is wrong. `convert` gets one request from ThingsBoard
//! (an RPC, an attribute update) and returns the messages that serve it, or
//! why it cannot be served (tbgw reports that to ThingsBoard). `reply` makes
//! ThingsBoard's reply to an RPC from what the device answered.
//!
//! Test the logic natively: `cargo test`. Then `./build.sh` and `./test.sh`
//! build the component and run it in `tbgw converter test`.

use tbgw_converter_sdk::{
    self as sdk, ConfigError, DownlinkMessage, DownlinkRequest, Entry, MqttPublish, MqttResponse, RpcAnswer,
};

struct Converter {
    prefix: String,
}

/// Attributes as one JSON object.
fn object(entries: &[Entry]) -> serde_json::Value {
    entries.iter().map(|e| (e.key.to_string(), e.value.to_json())).collect::<serde_json::Map<_, _>>().into()
}

fn publish(topic: String, payload: &serde_json::Value, response: Option<MqttResponse>) -> DownlinkMessage {
    DownlinkMessage::Mqtt(MqttPublish {
        topic,
        payload: payload.to_string().into_bytes(),
        qos: 1,
        retain: false,
        response,
    })
}

impl sdk::Downlink for Converter {
    fn create(config: &str) -> Result<Self, ConfigError> {
        let config = sdk::config::parse_document(config)?;
        let mut config = sdk::config::Obj::new("", &config)?;
        let prefix = config.opt_str("topicPrefix")?.unwrap_or("devices");
        if prefix.is_empty() {
            return Err(ConfigError::at("topicPrefix", "must be a topic, such as `devices`"));
        }
        Ok(Converter { prefix: prefix.to_owned() })
    }

    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        let base = format!("{}/{}", self.prefix, request.device());
        Ok(vec![match request {
            DownlinkRequest::Rpc(rpc) => {
                let params: serde_json::Value =
                    serde_json::from_str(&rpc.params).map_err(|e| format!("params are not JSON: {e}"))?;
                if !(params.is_object() || params.is_null()) {
                    return Err(format!("params of `{}` must be an object", rpc.method));
                }
                let payload = serde_json::json!({"id": rpc.id, "method": rpc.method, "params": params});
                // A two-way RPC: the device answers on .../rpc/response.
                let response = MqttResponse { topic: format!("{base}/rpc/response"), qos: 1, timeout_ms: 10_000 };
                publish(format!("{base}/rpc"), &payload, Some(response))
            }
            DownlinkRequest::AttributeUpdate(update) => {
                publish(format!("{base}/attributes"), &object(&update.entries), None)
            }
            DownlinkRequest::AttributeResponse(answer) => {
                publish(format!("{base}/attributes/response"), &object(&answer.values), None)
            }
        }])
    }

    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        // The device's answer as it is: JSON, or its text as a JSON string.
        Ok(answer.plain_reply())
    }
}

sdk::export_downlink!(Converter);

#[cfg(test)]
mod tests {
    use super::*;
    use sdk::Downlink;

    #[test]
    fn an_rpc_is_a_two_way_publish() {
        let converter = Converter::create(r#"{"topicPrefix": "devices"}"#).expect("config");
        let rpc = sdk::RpcRequest {
            device: "SN-001".into(),
            id: 1,
            method: "setInterval".into(),
            params: r#"{"seconds": 5}"#.into(),
        };
        let messages = converter.convert(&DownlinkRequest::Rpc(rpc)).expect("converts");
        let DownlinkMessage::Mqtt(p) = &messages[0] else { panic!("an MQTT publish: {messages:?}") };
        assert_eq!(p.topic, "devices/SN-001/rpc");
        assert_eq!(p.response.as_ref().map(|r| r.topic.as_str()), Some("devices/SN-001/rpc/response"));
        assert_eq!(p.payload, br#"{"id":1,"method":"setInterval","params":{"seconds":5}}"#);
    }
}
