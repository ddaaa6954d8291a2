//! A test guest: a user's own downlink converter, which also makes
//! ThingsBoard's replies itself, so that a test can tell its replies from
//! the built-in ones. Config: `{"kind": "mqtt"}` or `{"kind": "modbus"}`.
//!
//! - mqtt: an RPC goes to `custom/<device>/<method>` with its params and
//!   waits for the answer on `custom/<device>/<method>/reply`; the reply is
//!   `{"custom": true, "method": m, "answer": <the answer>}`.
//! - modbus: `readRegisters` `{"address", "count"}` reads holding
//!   registers, the reply `{"custom": true, "method": m, "registers": [..]}`;
//!   `writeRegister` `{"address", "value"}` writes one, the reply
//!   `{"custom": true, "method": m, "written": true}`.

use tbgw_converter_sdk::{
    self as sdk, ConfigError, DownlinkMessage, DownlinkRequest, ModbusRequest, MqttPublish, MqttResponse, RpcAnswer,
};

struct Custom {
    modbus: bool,
}

impl sdk::Downlink for Custom {
    fn create(config: &str) -> Result<Self, ConfigError> {
        let cfg: serde_json::Value =
            serde_json::from_str(config).map_err(|e| ConfigError::whole(format!("config is not JSON: {e}")))?;
        match cfg["kind"].as_str() {
            Some("mqtt") => Ok(Custom { modbus: false }),
            Some("modbus") => Ok(Custom { modbus: true }),
            _ => Err(ConfigError::at("kind", "expected mqtt or modbus")),
        }
    }

    fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        let DownlinkRequest::Rpc(rpc) = request else { return Err("custom: RPCs only".into()) };
        let params: serde_json::Value = serde_json::from_str(&rpc.params).unwrap_or(serde_json::Value::Null);
        if !self.modbus {
            let topic = format!("custom/{}/{}", rpc.device, rpc.method);
            let response = MqttResponse { topic: format!("{topic}/reply"), qos: 1, timeout_ms: 3000 };
            return Ok(vec![DownlinkMessage::Mqtt(MqttPublish {
                topic,
                payload: rpc.params.clone().into_bytes(),
                qos: 1,
                retain: false,
                response: Some(response),
            })]);
        }
        let number = |key: &str| params[key].as_u64().ok_or_else(|| format!("custom: params.{key}: a number"));
        let address = number("address")? as u16;
        Ok(vec![DownlinkMessage::Modbus(match rpc.method.as_str() {
            "readRegisters" => {
                ModbusRequest { function_code: 3, address, count: number("count")? as u16, payload: vec![] }
            }
            "writeRegister" => ModbusRequest {
                function_code: 6,
                address,
                count: 1,
                payload: (number("value")? as u16).to_be_bytes().to_vec(),
            },
            other => return Err(format!("custom: no method `{other}`")),
        })])
    }

    fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        let method = &answer.request.method;
        let reply = match answer.answers.first() {
            None => serde_json::json!({"custom": true, "method": method, "written": true}),
            Some(a) if self.modbus => {
                if a.payload.len() % 2 != 0 {
                    return Err(format!("custom: {} bytes are not whole registers", a.payload.len()));
                }
                let registers: Vec<u16> = a.payload.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                serde_json::json!({"custom": true, "method": method, "registers": registers})
            }
            Some(a) => {
                let answer = serde_json::from_slice(&a.payload)
                    .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&a.payload).into_owned()));
                serde_json::json!({"custom": true, "method": method, "answer": answer})
            }
        };
        Ok(reply.to_string())
    }
}

sdk::export_downlink!(Custom);
