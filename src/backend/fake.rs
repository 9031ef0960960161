//! An in-memory backend that records calls and can be told to fail, for service and protocol
//! tests. Compiled for unit tests and with the `testing` feature, never into the release binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::options::{self, Kind, OptionSpec, Options};
use super::{Backend, BackendError, Controller, Node, NodeId, Page, PageRequest, PublishContext, Scope, VolumeStats};
use crate::name::VolumeName;

const SPECS: &[OptionSpec] = &[OptionSpec::new("size", Kind::SizeGib), OptionSpec::new("label", Kind::Text)];

/// The steps [`FakeBackend::calls`] shows, and the names it shows them by.
const SUMMARY: &[(&str, &str)] =
    &[("create", "create"), ("stage", "activate"), ("unstage", "deactivate"), ("delete", "remove")];

/// What the fake has seen and holds.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Existing volumes (the storage).
    pub volumes: BTreeSet<String>,
    /// Volumes published by the controller (to this one node).
    pub published: BTreeSet<String>,
    /// Volumes staged by the node.
    pub staged: BTreeSet<String>,
    /// Every call of either half, as `op:name`, in order (`create`, `publish`, `stage`,
    /// `hand_out`, `unstage`, `unpublish`, `delete`, …).
    pub steps: Vec<String>,
    /// What changed, as the Docker front sees it: `create`, `activate` (staged when it was
    /// not), `deactivate` (unstaged when it was staged), `remove`, as `op:name`, in order.
    pub changes: Vec<String>,
    /// Operations that fail from now on: a step's name, or `activate` (staging), `deactivate`
    /// (unstaging), `remove` (deleting).
    pub failing: BTreeSet<&'static str>,
}

/// The fake backend: both halves over one [`FakeState`].
#[derive(Debug, Default)]
pub struct FakeBackend {
    /// Shared state, inspectable by tests.
    pub state: Mutex<FakeState>,
    /// How long publish, stage, unstage and unpublish each take (to widen race windows).
    pub delay: Duration,
    /// Whether its volumes are one namespace for every host using it (scope `global`).
    pub global: bool,
}

impl FakeBackend {
    /// A fake whose node-side steps each take `delay`.
    pub fn with_delay(delay: Duration) -> Self {
        Self { delay, ..Self::default() }
    }

    /// A fake with scope `global`: every service using it sees every volume.
    pub fn global() -> Self {
        Self { global: true, ..Self::default() }
    }

    /// Both halves of `fake`, as a service uses them.
    pub fn backend(fake: &Arc<FakeBackend>) -> Backend {
        Backend { controller: fake.clone(), node: fake.clone() }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many calls of `op` were made: a summary name of [`FakeBackend::calls`], else a
    /// step's.
    pub fn count(&self, op: &str) -> usize {
        let prefix = format!("{op}:");
        let calls = if SUMMARY.iter().any(|(_, as_seen)| *as_seen == op) { self.calls() } else { self.steps() };
        calls.iter().filter(|c| c.starts_with(&prefix)).count()
    }

    /// What happened to the volumes, as the Docker front sees it ([`FakeState::changes`]).
    pub fn calls(&self) -> Vec<String> {
        self.state().changes.clone()
    }

    fn changed(&self, what: &str, name: &VolumeName) {
        self.state().changes.push(format!("{what}:{name}"));
    }

    /// Every call of either half so far.
    pub fn steps(&self) -> Vec<String> {
        self.state().steps.clone()
    }

    /// Whether `name` is published and staged (what the Docker front calls active).
    pub fn active(&self, name: &str) -> bool {
        let s = self.state();
        s.published.contains(name) && s.staged.contains(name)
    }

    /// Makes `op` fail (or succeed again).
    pub fn set_failing(&self, op: &'static str, failing: bool) {
        let mut s = self.state();
        if failing {
            s.failing.insert(op);
        } else {
            s.failing.remove(op);
        }
    }

    fn record(&self, op: &'static str, name: &VolumeName) -> Result<(), BackendError> {
        let mut s = self.state();
        s.steps.push(format!("{op}:{name}"));
        let summary = SUMMARY.iter().find(|(step, _)| *step == op).map(|(_, as_seen)| *as_seen);
        if let Some(failing) = [Some(op), summary].into_iter().flatten().find(|o| s.failing.contains(o)) {
            return Err(BackendError::invalid(format!("injected {failing} failure")));
        }
        Ok(())
    }

    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[async_trait]
impl Controller for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn scope(&self) -> Scope {
        if self.global {
            Scope::Global
        } else {
            Scope::Local
        }
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        let mut opts = options::normalize(SPECS, raw)?;
        opts.entry("size".into()).or_insert_with(|| "16".into());
        Ok(opts)
    }

    async fn local_node(&self) -> Result<NodeId, BackendError> {
        Ok(NodeId("fakehost".into()))
    }

    async fn create(&self, name: &VolumeName, _opts: &Options, _resume: bool) -> Result<(), BackendError> {
        self.record("create", name)?;
        self.state().volumes.insert(name.to_string());
        self.changed("create", name);
        Ok(())
    }

    async fn discard_partial(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        self.record("discard", name)?;
        self.state().volumes.remove(name.as_str());
        Ok(())
    }

    async fn delete(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        self.record("delete", name)?;
        let mut s = self.state();
        if s.published.contains(name.as_str()) {
            return Err(BackendError::InUse {
                what: name.to_string(),
                holders: "published".into(),
                hint: "unpublish it".into(),
            });
        }
        s.volumes.remove(name.as_str());
        s.changes.push(format!("remove:{name}"));
        Ok(())
    }

    async fn publish(
        &self,
        name: &VolumeName,
        _opts: &Options,
        _node: &NodeId,
    ) -> Result<PublishContext, BackendError> {
        self.record("publish", name)?;
        self.pause().await;
        let mut s = self.state();
        if !s.volumes.contains(name.as_str()) {
            return Err(BackendError::not_found(format!("fake volume {name} does not exist")));
        }
        s.published.insert(name.to_string());
        Ok(PublishContext::new().with(PublishContext::DEVICE, format!("/dev/fake/{name}")))
    }

    async fn unpublish(&self, name: &VolumeName, _opts: &Options, _node: &NodeId) -> Result<(), BackendError> {
        self.record("unpublish", name)?;
        self.pause().await;
        self.state().published.remove(name.as_str());
        Ok(())
    }

    async fn expand(&self, name: &VolumeName, _opts: &Options, size_gib: u64) -> Result<u64, BackendError> {
        self.record("expand", name)?;
        self.pause().await;
        if !self.state().volumes.contains(name.as_str()) {
            return Err(BackendError::not_found(format!("fake volume {name} does not exist")));
        }
        Ok(size_gib)
    }

    /// The fake's one setting that changes in place is `label`.
    fn plan_modify(
        &self,
        _name: &VolumeName,
        opts: &Options,
        changes: &BTreeMap<String, String>,
    ) -> Result<Options, BackendError> {
        if let Some(key) = changes.keys().find(|k| *k != "label") {
            return Err(BackendError::UnknownOption { key: key.clone(), accepted: "label".into() });
        }
        let mut target = opts.clone();
        target.extend(changes.clone());
        Ok(target)
    }

    async fn modify(&self, name: &VolumeName, _target: &Options) -> Result<(), BackendError> {
        self.record("modify", name)?;
        self.pause().await;
        if !self.state().volumes.contains(name.as_str()) {
            return Err(BackendError::not_found(format!("fake volume {name} does not exist")));
        }
        Ok(())
    }

    /// The fake's volumes "move" to zones `zone-*`; a move to `slow-*` runs out of time (the
    /// first time only), and one with an injected `move` failure is undone.
    async fn plan_move(&self, name: &VolumeName, zone: &str) -> Result<crate::backend::Relocation, BackendError> {
        if !self.state().volumes.contains(name.as_str()) {
            return Err(BackendError::not_found(format!("fake volume {name} does not exist")));
        }
        Ok(crate::backend::Relocation { zone: zone.to_owned(), source: name.to_string(), id: format!("move-{zone}") })
    }

    async fn relocate(
        &self,
        name: &VolumeName,
        plan: &crate::backend::Relocation,
        _delete_source: bool,
    ) -> Result<crate::backend::Moved, BackendError> {
        if let Err(e) = self.record("move", name) {
            return Ok(crate::backend::Moved::Undone(e));
        }
        self.pause().await;
        let first = {
            let mut s = self.state();
            let marker = format!("moving to {}", plan.zone);
            let first = !s.steps.contains(&marker);
            s.steps.push(marker);
            first
        };
        if plan.zone.starts_with("slow-") && first {
            return Err(BackendError::Timeout {
                op: format!("fake move of {name}"),
                elapsed: std::time::Duration::from_secs(1),
                last_seen: "pending".into(),
                hint: String::new(),
            });
        }
        Ok(crate::backend::Moved::Done)
    }

    async fn publications(&self, _node: &NodeId) -> Result<BTreeMap<String, PublishContext>, BackendError> {
        let s = self.state();
        Ok(s.published.iter().map(|n| (n.clone(), PublishContext::new())).collect())
    }

    async fn list(&self, page: &PageRequest) -> Result<Page, BackendError> {
        Ok(Page::of(self.state().volumes.iter().cloned(), page))
    }

    /// The fake's volumes are one namespace shared by every service (every "host") using it.
    async fn knows(&self, name: &VolumeName) -> bool {
        self.state().volumes.contains(name.as_str())
    }
}

#[async_trait]
impl Node for FakeBackend {
    fn staging_path(&self, name: &VolumeName) -> PathBuf {
        PathBuf::from("/fake").join(name.as_str())
    }

    fn data_path(&self, name: &VolumeName) -> PathBuf {
        self.staging_path(name)
    }

    async fn stage(
        &self,
        name: &VolumeName,
        _opts: &Options,
        ctx: &PublishContext,
        _staging: &Path,
    ) -> Result<(), BackendError> {
        self.record("stage", name)?;
        self.pause().await;
        let mut s = self.state();
        if ctx.get(PublishContext::DEVICE).is_none() || !s.published.contains(name.as_str()) {
            return Err(BackendError::invalid(format!("fake volume {name} is not published")));
        }
        if s.staged.insert(name.to_string()) {
            s.changes.push(format!("activate:{name}"));
        }
        Ok(())
    }

    async fn unstage(&self, name: &VolumeName, _staging: &Path) -> Result<(), BackendError> {
        self.record("unstage", name)?;
        self.pause().await;
        if self.state().staged.remove(name.as_str()) {
            self.changed("deactivate", name);
        }
        Ok(())
    }

    async fn is_staged(&self, name: &VolumeName, _staging: &Path) -> Result<bool, BackendError> {
        Ok(self.state().staged.contains(name.as_str()))
    }

    async fn staged(&self) -> Result<BTreeSet<String>, BackendError> {
        Ok(self.state().staged.clone())
    }

    async fn publish(
        &self,
        name: &VolumeName,
        _opts: &Options,
        staging: &Path,
        target: Option<&Path>,
        _read_only: bool,
    ) -> Result<PathBuf, BackendError> {
        self.record("hand_out", name)?;
        Ok(target.unwrap_or(staging).to_path_buf())
    }

    async fn unpublish(&self, name: &VolumeName, _target: &Path) -> Result<(), BackendError> {
        self.record("take_back", name)
    }

    async fn stats(&self, _path: &Path) -> Result<VolumeStats, BackendError> {
        Ok(VolumeStats::default())
    }

    async fn expand_fs(
        &self,
        name: &VolumeName,
        _opts: &Options,
        _staging: &Path,
        _size_gib: Option<u64>,
    ) -> Result<(), BackendError> {
        self.record("grow_fs", name)?;
        if !self.state().staged.contains(name.as_str()) {
            return Err(BackendError::invalid(format!("fake volume {name} is not staged")));
        }
        Ok(())
    }
}
