//! What `docker volume inspect` shows under `Status`: a few entries of the service's, the
//! backend's own, and the volume's options. Serialized flat, keys in order, straight from the
//! shared record: building a Get's reply allocates next to nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::state::VolumeRecord;

/// A volume's Status; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The service's name.
    pub(super) service: Arc<str>,
    /// The backend the volume belongs to.
    pub(super) backend: String,
    /// The record, for a volume this host has one of.
    pub(super) record: Option<Arc<VolumeRecord>>,
    /// The backend's entries (`path`, `image`, `volumeID`, …).
    pub(super) extra: BTreeMap<String, Value>,
}

/// One entry's value, borrowed.
enum Entry<'a> {
    Value(&'a Value),
    Str(&'a str),
    U64(u64),
    Bool(bool),
    Options(&'a crate::backend::Options),
}

impl Serialize for Entry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Entry::Value(v) => v.serialize(s),
            Entry::Str(v) => s.serialize_str(v),
            Entry::U64(v) => s.serialize_u64(*v),
            Entry::Bool(v) => s.serialize_bool(*v),
            Entry::Options(o) => o.serialize(s),
        }
    }
}

impl Status {
    /// The service's entries, then the backend's (a key of both is the service's).
    fn entries(&self) -> Vec<(&str, Entry<'_>)> {
        let mut entries: Vec<(&str, Entry<'_>)> = vec![
            ("service", Entry::Str(&self.service)),
            ("backend", Entry::Str(&self.backend)),
            ("holders", Entry::U64(self.holders())),
            ("active", Entry::Bool(self.active())),
        ];
        if let Some(record) = &self.record {
            entries.push(("options", Entry::Options(&record.options)));
            if let Some(pending) = record.pending {
                entries.push(("pending", Entry::Str(pending.as_str())));
            }
        }
        for (k, v) in &self.extra {
            if !entries.iter().any(|(fixed, _)| *fixed == k.as_str()) {
                entries.push((k.as_str(), Entry::Value(v)));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries
    }

    /// How many holders the volume has here.
    pub fn holders(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.holder_count())
    }

    /// Whether the volume is active here.
    pub fn active(&self) -> bool {
        self.record.as_ref().is_some_and(|r| r.active)
    }

    /// The Status as a JSON value (for the CLI and tests).
    pub fn value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The Status as a map of JSON values.
    pub fn to_map(&self) -> BTreeMap<String, Value> {
        match self.value() {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entries = self.entries();
        let mut map = s.serialize_map(Some(entries.len()))?;
        for (k, v) in &entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}
