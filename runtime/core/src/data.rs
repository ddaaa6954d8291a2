//! The host's own records around the shared data model ([`tbgw_data`]):
//! what the event store keeps.

use tbgw_data::DeviceUpdate;

/// A device update on its way to ThingsBoard, as the event store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The connector that received it (for statistics).
    pub connector: String,
    /// The update; every telemetry entry has its `ts` (the receipt time
    /// when the converter gave none).
    pub update: DeviceUpdate,
    /// How many converted updates it carries: the pipeline merges a
    /// device's updates of one batch into one event ([`Event::merge`]);
    /// statistics count the updates.
    pub updates: u32,
}

impl Event {
    /// One converted update.
    pub fn new(connector: impl Into<String>, update: DeviceUpdate) -> Event {
        Event { connector: connector.into(), update, updates: 1 }
    }

    /// Whether `other`, a later update, can be carried in this event: the
    /// same connector, device and profile, and no attribute of both (an
    /// attribute set twice is two updates, as it came).
    pub fn merges_with(&self, other: &Event) -> bool {
        let (u, o) = (&self.update, &other.update);
        u.device == o.device
            && self.connector == other.connector
            && u.device_type == o.device_type
            && !o.attributes.iter().any(|a| u.attributes.iter().any(|e| e.key == a.key))
    }

    /// Take in `later`, a later update of the same device
    /// ([`Event::merges_with`]), losing nothing: its attributes join these;
    /// its readings join a reading of the same time that has none of their
    /// keys, or follow as readings of their own (a key read twice at one
    /// time is sent twice, as it came).
    pub fn merge(&mut self, later: Event) {
        let u = &mut self.update;
        u.attributes.extend(later.update.attributes);
        for t in later.update.telemetry {
            let free = |e: &&mut tbgw_data::Telemetry| {
                e.ts == t.ts && !t.values.iter().any(|v| e.values.iter().any(|w| w.key == v.key))
            };
            match u.telemetry.iter_mut().find(free) {
                Some(same) => same.values.extend(t.values),
                None => u.telemetry.push(t),
            }
        }
        self.updates = self.updates.saturating_add(later.updates);
    }
}

/// A device ThingsBoard knows through this gateway, as the store keeps it
/// to connect it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_type: Option<String>,
    /// The connector that owns the device (where its requests go).
    pub connector: String,
    /// The name ThingsBoard shows it under since a user renamed it there
    /// (`gateway_device_renamed`): its data go under that name, and
    /// requests for that name reach it. `None`: its own name.
    pub renamed: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbgw_data::{Entry, Telemetry, Value};

    fn update(device: &str, ts: i64, values: &[(&str, i64)], attributes: &[(&str, i64)]) -> Event {
        let entries = |kv: &[(&str, i64)]| kv.iter().map(|(k, v)| Entry::new(*k, Value::Int(*v))).collect::<Vec<_>>();
        Event::new(
            "c",
            DeviceUpdate {
                device: device.into(),
                device_type: None,
                attributes: entries(attributes),
                telemetry: vec![Telemetry { ts: Some(ts), values: entries(values) }],
            },
        )
    }

    type Reading = (Option<i64>, Vec<(String, Value)>);

    fn values(t: &Telemetry) -> Vec<(String, Value)> {
        t.values.iter().map(|e| (e.key.to_string(), e.value.clone())).collect()
    }

    #[test]
    fn a_merged_event_loses_nothing() {
        let mut e = update("D", 10, &[("a", 1)], &[("fw", 1)]);
        e.merge(update("D", 10, &[("b", 2)], &[("hw", 7)]));
        e.merge(update("D", 10, &[("a", 3)], &[]));
        e.merge(update("D", 20, &[("a", 4)], &[]));
        assert_eq!(e.updates, 4);
        // One reading a time where their keys differ; a key read twice at
        // one time is two readings.
        let readings: Vec<Reading> = e.update.telemetry.iter().map(|t| (t.ts, values(t))).collect();
        assert_eq!(
            readings,
            [
                (Some(10), vec![("a".into(), Value::Int(1)), ("b".into(), Value::Int(2))]),
                (Some(10), vec![("a".into(), Value::Int(3))]),
                (Some(20), vec![("a".into(), Value::Int(4))]),
            ]
        );
        let attributes: Vec<String> = e.update.attributes.iter().map(|a| a.key.to_string()).collect();
        assert_eq!(attributes, ["fw", "hw"]);
    }

    #[test]
    fn only_the_same_device_of_the_same_connector_and_profile_merges() {
        let e = update("D", 1, &[("a", 1)], &[]);
        assert!(e.merges_with(&update("D", 2, &[], &[])));
        assert!(!e.merges_with(&update("E", 1, &[], &[])));
        assert!(!e.merges_with(&Event { connector: "other".into(), ..update("D", 1, &[], &[]) }));
        let mut typed = update("D", 1, &[], &[]);
        typed.update.device_type = Some("meter".into());
        assert!(!e.merges_with(&typed));
        // An attribute set twice is two updates.
        let set = update("D", 1, &[], &[("fw", 1)]);
        assert!(set.merges_with(&update("D", 1, &[], &[("hw", 2)])));
        assert!(!set.merges_with(&update("D", 1, &[], &[("fw", 2)])));
    }
}
