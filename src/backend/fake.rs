//! An in-memory backend that counts calls and can be told to fail, for service and protocol
//! tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::options::{self, Kind, OptionSpec, Options};
use super::{Backend, BackendError, Scope};
use crate::service::name::VolumeName;

const SPECS: &[OptionSpec] = &[OptionSpec::new("size", Kind::SizeGib), OptionSpec::new("label", Kind::Text)];

/// What the fake has seen and holds.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Existing volumes.
    pub volumes: BTreeSet<String>,
    /// Active volumes.
    pub active: BTreeSet<String>,
    /// Every call, as `op:name`, in order.
    pub calls: Vec<String>,
    /// Operations (`create`, `activate`, …) that fail from now on.
    pub failing: BTreeSet<&'static str>,
}

/// The fake backend.
#[derive(Debug, Default)]
pub struct FakeBackend {
    /// Shared state, inspectable by tests.
    pub state: Mutex<FakeState>,
    /// How long activate and deactivate take (to widen race windows in tests).
    pub delay: Duration,
}

impl FakeBackend {
    /// A fake whose activate and deactivate each take `delay`.
    pub fn with_delay(delay: Duration) -> Self {
        Self { delay, ..Self::default() }
    }

    /// How many calls of `op` were made.
    pub fn count(&self, op: &str) -> usize {
        let prefix = format!("{op}:");
        self.state.lock().expect("fake poisoned").calls.iter().filter(|c| c.starts_with(&prefix)).count()
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().expect("fake poisoned").calls.clone()
    }

    /// Makes `op` fail (or succeed again).
    pub fn set_failing(&self, op: &'static str, failing: bool) {
        let mut s = self.state.lock().expect("fake poisoned");
        if failing {
            s.failing.insert(op);
        } else {
            s.failing.remove(op);
        }
    }

    fn record(&self, op: &'static str, name: &VolumeName) -> Result<(), BackendError> {
        let mut s = self.state.lock().expect("fake poisoned");
        s.calls.push(format!("{op}:{name}"));
        if s.failing.contains(op) {
            return Err(BackendError::Refused(format!("injected {op} failure")));
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn scope(&self) -> Scope {
        Scope::Local
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        let mut opts = options::normalize(SPECS, raw)?;
        opts.entry("size".into()).or_insert_with(|| "16".into());
        Ok(opts)
    }

    async fn create(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        self.record("create", name)?;
        self.state.lock().expect("fake poisoned").volumes.insert(name.to_string());
        Ok(())
    }

    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        self.record("activate", name)?;
        tokio::time::sleep(self.delay).await;
        self.state.lock().expect("fake poisoned").active.insert(name.to_string());
        Ok(self.mountpoint(name, opts))
    }

    async fn deactivate(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        self.record("deactivate", name)?;
        tokio::time::sleep(self.delay).await;
        self.state.lock().expect("fake poisoned").active.remove(name.as_str());
        Ok(())
    }

    async fn remove(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        self.record("remove", name)?;
        let mut s = self.state.lock().expect("fake poisoned");
        if s.active.contains(name.as_str()) {
            return Err(BackendError::Refused("still active".into()));
        }
        s.volumes.remove(name.as_str());
        Ok(())
    }

    async fn is_active(&self, name: &VolumeName, _opts: &Options) -> Result<bool, BackendError> {
        Ok(self.state.lock().expect("fake poisoned").active.contains(name.as_str()))
    }

    fn mountpoint(&self, name: &VolumeName, _opts: &Options) -> PathBuf {
        PathBuf::from("/fake").join(name.as_str())
    }

    /// The fake's volumes are one namespace shared by every service (every "host") using it.
    async fn known_volumes(&self) -> Vec<String> {
        self.state.lock().expect("fake poisoned").volumes.iter().cloned().collect()
    }

    async fn knows(&self, name: &VolumeName) -> bool {
        self.state.lock().expect("fake poisoned").volumes.contains(name.as_str())
    }
}
