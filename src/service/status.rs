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
#[derive(Debug, Clone, Copy)]
pub enum StatusEntry<'a> {
    /// A backend's value.
    Value(&'a Value),
    /// A string.
    Str(&'a str),
    /// A count.
    U64(u64),
    /// A flag.
    Bool(bool),
    /// The volume's options.
    Options(&'a crate::backend::Options),
}

impl Serialize for StatusEntry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StatusEntry::Value(v) => v.serialize(s),
            StatusEntry::Str(v) => s.serialize_str(v),
            StatusEntry::U64(v) => s.serialize_u64(*v),
            StatusEntry::Bool(v) => s.serialize_bool(*v),
            StatusEntry::Options(o) => o.serialize(s),
        }
    }
}

impl Status {
    /// The service's entries, in key order (`options` and `pending` only with a record).
    fn fixed(&self) -> [Option<(&'static str, StatusEntry<'_>)>; 6] {
        let record = self.record.as_deref();
        [
            Some(("active", StatusEntry::Bool(self.active()))),
            Some(("backend", StatusEntry::Str(&self.backend))),
            Some(("holders", StatusEntry::U64(self.holders()))),
            record.map(|r| ("options", StatusEntry::Options(&r.options))),
            record.and_then(|r| r.pending.as_ref()).map(|p| ("pending", StatusEntry::Str(p.as_str()))),
            Some(("service", StatusEntry::Str(&self.service))),
        ]
    }

    /// Calls `f` with every entry in key order: the service's merged with the backend's (a key
    /// of both is the service's). Nothing is collected or sorted.
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn try_for_each_entry<E>(&self, mut f: impl FnMut(&str, StatusEntry<'_>) -> Result<(), E>) -> Result<(), E> {
        let fixed = self.fixed();
        let taken = |key: &str| fixed.iter().flatten().any(|(fixed, _)| *fixed == key);
        let mut extra = self.extra.iter().filter(|(key, _)| !taken(key)).peekable();
        for (key, value) in fixed.iter().flatten().copied() {
            while let Some((k, v)) = extra.next_if(|(k, _)| k.as_str() < key) {
                f(k, StatusEntry::Value(v))?;
            }
            f(key, value)?;
        }
        extra.try_for_each(|(k, v)| f(k, StatusEntry::Value(v)))
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
        let mut map = s.serialize_map(None)?;
        self.try_for_each_entry(|k, v| map.serialize_entry(k, &v))?;
        map.end()
    }
}
