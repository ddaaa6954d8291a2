//! ThingsBoard's MQTT gateway API, as tbgw speaks it.
//!
//! - [`codec`]: the JSON shapes of the gateway API's messages, both ways.
//!
//! The delivery client (rumqttc, QoS 1, PUBACK-driven deletion from the
//! store) will live here too.

pub mod codec;
