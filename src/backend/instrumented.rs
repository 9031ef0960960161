//! Backends whose operations are measured: `rexray_backend_operations_total{backend,
//! operation, outcome}` and their latency, the outcome labelled from the typed error.
//!
//! Every trait method is forwarded, including the ones with a default body (`status`,
//! `knows`, `snapshots`): a method added to [`Controller`] or [`Node`] must be forwarded here
//! too, or the wrapped backend's own version is silently replaced by the default.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    Backend, BackendError, Controller, Node, NodeId, Options, Page, PageRequest, PublishContext, Scope, Snapshots,
    VolumeStats,
};
use crate::name::VolumeName;

/// The outcome label of a result: `ok`, or the error's kind.
pub fn outcome<T>(result: &Result<T, BackendError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.kind().label(),
    }
}

/// Runs `call` and records it as `operation` of `backend`.
pub async fn timed<T>(
    backend: &'static str,
    operation: &'static str,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let start = Instant::now();
    let result = call.await;
    crate::metrics::backend_operation(backend, operation, outcome(&result), start.elapsed());
    result
}

/// Wraps both halves of `backend` so that their operations are measured.
pub fn instrument(backend: Backend) -> Backend {
    let kind = backend.controller.kind();
    Backend {
        controller: Arc::new(MeasuredController { inner: backend.controller }),
        node: Arc::new(MeasuredNode { kind, inner: backend.node }),
    }
}

/// A measured [`Controller`].
#[derive(Debug)]
struct MeasuredController {
    inner: Arc<dyn Controller>,
}

#[async_trait]
impl Controller for MeasuredController {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn scope(&self) -> Scope {
        self.inner.scope()
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        self.inner.parse_options(raw)
    }

    async fn local_node(&self) -> Result<NodeId, BackendError> {
        self.inner.local_node().await
    }

    async fn create(&self, name: &VolumeName, opts: &Options, resume: bool) -> Result<(), BackendError> {
        timed(self.kind(), "create", self.inner.create(name, opts, resume)).await
    }

    async fn discard_partial(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        timed(self.kind(), "discard_partial", self.inner.discard_partial(name, opts)).await
    }

    async fn delete(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        timed(self.kind(), "delete", self.inner.delete(name, opts)).await
    }

    async fn publish(&self, name: &VolumeName, opts: &Options, node: &NodeId) -> Result<PublishContext, BackendError> {
        timed(self.kind(), "controller_publish", self.inner.publish(name, opts, node)).await
    }

    async fn unpublish(&self, name: &VolumeName, opts: &Options, node: &NodeId) -> Result<(), BackendError> {
        timed(self.kind(), "controller_unpublish", self.inner.unpublish(name, opts, node)).await
    }

    async fn publications(&self, node: &NodeId) -> Result<BTreeMap<String, PublishContext>, BackendError> {
        timed(self.kind(), "publications", self.inner.publications(node)).await
    }

    async fn expand(&self, name: &VolumeName, opts: &Options, size_gib: u64) -> Result<u64, BackendError> {
        timed(self.kind(), "expand", self.inner.expand(name, opts, size_gib)).await
    }

    fn plan_modify(
        &self,
        name: &VolumeName,
        opts: &Options,
        changes: &BTreeMap<String, String>,
    ) -> Result<Options, BackendError> {
        self.inner.plan_modify(name, opts, changes)
    }

    async fn modify(&self, name: &VolumeName, target: &Options) -> Result<(), BackendError> {
        timed(self.kind(), "modify", self.inner.modify(name, target)).await
    }

    async fn plan_move(&self, name: &VolumeName, zone: &str) -> Result<crate::backend::Relocation, BackendError> {
        self.inner.plan_move(name, zone).await
    }

    async fn relocate(
        &self,
        name: &VolumeName,
        plan: &crate::backend::Relocation,
        delete_source: bool,
    ) -> Result<crate::backend::Moved, BackendError> {
        timed(self.kind(), "move", self.inner.relocate(name, plan, delete_source)).await
    }

    async fn list(&self, page: &PageRequest) -> Result<Page, BackendError> {
        self.inner.list(page).await
    }

    fn usage(&self, name: &VolumeName) -> crate::backend::Usage {
        self.inner.usage(name)
    }

    async fn capacity(&self) -> Result<Option<u64>, BackendError> {
        self.inner.capacity().await
    }

    async fn local_zone(&self) -> Result<Option<String>, BackendError> {
        self.inner.local_zone().await
    }

    async fn attach_limit(&self) -> Result<Option<u32>, BackendError> {
        self.inner.attach_limit().await
    }

    async fn knows(&self, name: &VolumeName) -> bool {
        self.inner.knows(name).await
    }

    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        self.inner.status(name, opts)
    }

    fn snapshots(&self) -> Option<&dyn Snapshots> {
        self.inner.snapshots()
    }
}

/// A measured [`Node`].
#[derive(Debug)]
struct MeasuredNode {
    kind: &'static str,
    inner: Arc<dyn Node>,
}

#[async_trait]
impl Node for MeasuredNode {
    fn staging_path(&self, name: &VolumeName) -> PathBuf {
        self.inner.staging_path(name)
    }

    fn data_path(&self, name: &VolumeName) -> PathBuf {
        self.inner.data_path(name)
    }

    async fn stage(
        &self,
        name: &VolumeName,
        opts: &Options,
        ctx: &PublishContext,
        staging: &Path,
    ) -> Result<(), BackendError> {
        timed(self.kind, "node_stage", self.inner.stage(name, opts, ctx, staging)).await
    }

    async fn stage_block(&self, name: &VolumeName, ctx: &PublishContext, staging: &Path) -> Result<(), BackendError> {
        timed(self.kind, "node_stage", self.inner.stage_block(name, ctx, staging)).await
    }

    async fn publish_block(
        &self,
        name: &VolumeName,
        staging: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), BackendError> {
        timed(self.kind, "node_publish", self.inner.publish_block(name, staging, target, read_only)).await
    }

    async fn unstage_block(&self, name: &VolumeName, staging: &Path) -> Result<(), BackendError> {
        timed(self.kind, "node_unstage", self.inner.unstage_block(name, staging)).await
    }

    async fn block_size(&self, path: &Path) -> Result<u64, BackendError> {
        self.inner.block_size(path).await
    }

    async fn unstage(&self, name: &VolumeName, staging: &Path) -> Result<(), BackendError> {
        timed(self.kind, "node_unstage", self.inner.unstage(name, staging)).await
    }

    async fn is_staged(&self, name: &VolumeName, staging: &Path) -> Result<bool, BackendError> {
        self.inner.is_staged(name, staging).await
    }

    async fn staged(&self) -> Result<BTreeSet<String>, BackendError> {
        self.inner.staged().await
    }

    async fn publish(
        &self,
        name: &VolumeName,
        opts: &Options,
        staging: &Path,
        target: Option<&Path>,
        read_only: bool,
    ) -> Result<PathBuf, BackendError> {
        timed(self.kind, "node_publish", self.inner.publish(name, opts, staging, target, read_only)).await
    }

    async fn unpublish(&self, name: &VolumeName, target: &Path) -> Result<(), BackendError> {
        timed(self.kind, "node_unpublish", self.inner.unpublish(name, target)).await
    }

    async fn stats(&self, path: &Path) -> Result<VolumeStats, BackendError> {
        self.inner.stats(path).await
    }

    async fn expand_fs(
        &self,
        name: &VolumeName,
        opts: &Options,
        staging: &Path,
        size_gib: Option<u64>,
    ) -> Result<(), BackendError> {
        timed(self.kind, "node_expand", self.inner.expand_fs(name, opts, staging, size_gib)).await
    }

    async fn forget(&self, name: &VolumeName) {
        self.inner.forget(name).await;
    }
}
