//! Reconciling records with reality: all of them at open, and one volume's before each
//! operation on it.
//!
//! At open the backend is asked once what is published to this node and once what is staged,
//! and every record is brought in line:
//!
//! | record | reality | done |
//! |---|---|---|
//! | `creating` | – | the create is finished (resumed); if that fails, what it left is discarded |
//! | `removing` | – | the remove is finished (torn down, deleted, forgotten) |
//! | holders, same boot | published and staged | kept |
//! | holders, same boot | anything less | activated again (its containers still use it) |
//! | holders, after a reboot | – | the holders are dropped (their containers are gone) |
//! | no holders | published or staged, or an operation was under way | released |
//! | no holders | nothing | kept |
//! | an orchestrator's claims (CSI) | – | kept: the orchestrator finishes or undoes its calls |
//!
//! Storage of this backend's that no record owns (an image or directory of a local backend) is
//! reported and left alone, as are devices attached for it.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use super::state::{Pending, VolumeRecord};
use super::{ServiceError, VolumeService};
use crate::backend::{PageRequest, PublishContext, Scope};
use crate::name::VolumeName;

/// What the backend said about this node at open (`None`: it could not be asked).
struct Reality {
    published: Option<BTreeMap<String, PublishContext>>,
    staged: Option<BTreeSet<String>>,
}

/// How long the start-up look at the storage (what is attached here) may wait for it; past
/// that, reconciliation goes by the mount table alone.
const LOOK_BUDGET: crate::deadline::Budget = crate::deadline::Budget {
    caller: "the start-up look at the storage's 10 s limit",
    total: std::time::Duration::from_secs(10),
    reserve: std::time::Duration::ZERO,
};

impl VolumeService {
    /// Reconciles every loaded record (see the module documentation) and reports storage that
    /// no record owns.
    pub(super) async fn reconcile_all(&self, records: Vec<VolumeRecord>, same_boot: bool) {
        let reality = self.look_at_reality().await;
        let names: BTreeSet<String> = records.iter().map(|r| r.name.clone()).collect();
        for record in records {
            let name = record.name.clone();
            match self.reconcile(record, same_boot, &reality).await {
                Some(record) => self.publish(&name, Some(record)),
                None => self.publish(&name, None),
            }
        }
        self.report_unrecorded(&names, &reality).await;
    }

    async fn look_at_reality(&self) -> Reality {
        let (controller, node) = (&self.backend.controller, &self.backend.node);
        let published = crate::deadline::within(LOOK_BUDGET, async {
            match controller.local_node().await {
                Ok(here) => controller.publications(&here).await.map_err(|e| (true, e)),
                Err(e) => Err((false, e)),
            }
        })
        .await;
        let published = match published {
            Ok(p) => Some(p),
            Err((true, e)) => {
                warn!(service = %self.name, error = %e, "cannot tell which volumes are attached here; reconciling from the mount table alone");
                None
            }
            Err((false, e)) => {
                warn!(service = %self.name, error = %e, "cannot tell which node this is; reconciling from the mount table alone");
                None
            }
        };
        let staged = match node.staged().await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(service = %self.name, error = %e, "cannot read the mount table; volumes are reconciled when next used");
                None
            }
        };
        Reality { published, staged }
    }

    /// Logs storage and attachments of this backend that no record owns: never touched.
    async fn report_unrecorded(&self, recorded: &BTreeSet<String>, reality: &Reality) {
        if self.scope() == Scope::Local {
            match self.backend.controller.list(&PageRequest::default()).await {
                Ok(page) => {
                    for name in page.names.iter().filter(|n| !recorded.contains(*n)) {
                        warn!(service = %self.name, volume = %name, "found storage for volume {name} with no volume record (left by an older version, an interrupted operation or by hand); left alone: remove it by hand, or the name cannot be created");
                    }
                }
                Err(e) => warn!(service = %self.name, error = %e, "could not look for storage without a record"),
            }
        }
        let attached = reality.published.iter().flat_map(BTreeMap::keys);
        let mounted = reality.staged.iter().flatten();
        for name in attached.chain(mounted).collect::<BTreeSet<_>>() {
            if !recorded.contains(name) {
                warn!(service = %self.name, volume = %name, "volume {name} is attached or mounted here but has no record; left alone");
            }
        }
    }

    /// Brings one loaded record in line with reality; `None` when it ends (a finished remove,
    /// a discarded create).
    async fn reconcile(&self, mut record: VolumeRecord, same_boot: bool, reality: &Reality) -> Option<VolumeRecord> {
        const OP: &str = "reconcile";
        let Ok(name) = VolumeName::new(&record.name) else {
            return Some(record);
        };
        if record.backend != self.backend.kind() {
            // Another backend's volume: not ours to touch (every operation on it is refused).
            return Some(record);
        }
        if !same_boot && record.holder_count() > 0 {
            warn!(volume = %name, holders = record.holder_count(), "the host rebooted since the last start; dropping the volume's holders");
            record.holders.clear();
            record.anonymous = false;
            record.active = false;
            if let Err(e) = self.save(record.clone()).await {
                warn!(volume = %name, error = %e, "could not save reconciled state");
            }
        }
        if matches!(record.pending, Some(Pending::Moving { .. })) {
            let settled =
                crate::deadline::within(super::relocate::MOVE_AT_START, self.settle_record(OP, &name, record.clone()));
            match settled.await {
                Ok(Some(settled)) => record = settled,
                Ok(None) => return None,
                Err(e) => {
                    warn!(volume = %name, error = %e.chain(), "could not finish an interrupted move yet; the next operation on the volume goes on with it");
                    return Some(self.record(&name).unwrap_or(record));
                }
            }
        }
        if matches!(record.pending, Some(Pending::Resizing { .. } | Pending::Modifying { .. })) {
            match self.settle_record(OP, &name, record.clone()).await {
                Ok(Some(settled)) => record = settled,
                Ok(None) => return None,
                Err(e) => {
                    warn!(volume = %name, error = %e.chain(), "could not settle an interrupted resize or modification");
                }
            }
        }
        if matches!(record.pending, Some(Pending::Creating | Pending::Removing)) {
            return match self.settle_record(OP, &name, record.clone()).await {
                Ok(settled) => settled,
                Err(e) => {
                    warn!(volume = %name, error = %e.chain(), "could not finish an interrupted operation; the next operation on the volume retries");
                    Some(self.record(&name).unwrap_or(record))
                }
            };
        }
        if !record.csi.is_empty() && record.holder_count() == 0 {
            // The orchestrator's: it finishes or undoes what it asked for.
            return Some(record);
        }
        let published = reality.published.as_ref().map(|p| p.contains_key(name.as_str()));
        let staged = reality.staged.as_ref().map(|s| s.contains(name.as_str()));
        if record.holder_count() > 0 {
            return Some(self.keep_active(&name, record, published, staged).await);
        }
        let holds_something = published == Some(true)
            || staged == Some(true)
            || record.pending.is_some()
            || (record.active && (published.is_none() || staged.is_none()));
        if !holds_something {
            if record.active {
                record.active = false;
                self.save_logged(&name, &record).await;
            }
            return Some(record);
        }
        match self.deactivate(&name, &record.options).await {
            Ok(()) => {
                if published == Some(true) || staged == Some(true) {
                    info!(volume = %name, "released a volume that was attached or mounted with no holders");
                }
                record.active = false;
                record.pending = None;
            }
            Err(e) => {
                warn!(volume = %name, error = %e, "could not release an unheld volume; the next operation on it retries");
                record.pending = Some(Pending::Deactivating);
            }
        }
        self.save_logged(&name, &record).await;
        Some(record)
    }

    /// A held volume after a daemon restart in the same boot: kept if it is still active,
    /// else activated again; when that fails its holders are dropped.
    async fn keep_active(
        &self,
        name: &VolumeName,
        mut record: VolumeRecord,
        published: Option<bool>,
        staged: Option<bool>,
    ) -> VolumeRecord {
        let still_staged = match staged {
            Some(true) => true,
            // Not in the table of mounts under the staging root: ask about this one volume
            // (a backend that mounts nothing answers for itself).
            _ => {
                let node = &self.backend.node;
                node.is_staged(name, &node.staging_path(name)).await.unwrap_or(false)
            }
        };
        if still_staged && published != Some(false) && record.pending.is_none() {
            if !record.active {
                record.active = true;
                self.save_logged(name, &record).await;
            }
            return record;
        }
        match self.activate(name, &record.options).await {
            Ok(path) => {
                info!(volume = %name, path = %path.display(), holders = record.holder_count(), "re-activated a volume still in use");
                record.active = true;
                record.pending = None;
            }
            Err(e) => {
                warn!(volume = %name, error = %e, "could not re-activate a volume still in use; dropping its holders");
                record.holders.clear();
                record.anonymous = false;
                record.active = false;
                record.pending = match self.deactivate(name, &record.options).await {
                    Ok(()) => None,
                    Err(_) => Some(Pending::Deactivating),
                };
            }
        }
        self.save_logged(name, &record).await;
        record
    }

    async fn save_logged(&self, name: &VolumeName, record: &VolumeRecord) {
        if let Err(e) = self.save(record.clone()).await {
            warn!(volume = %name, error = %e, "could not save reconciled state");
        }
    }

    /// The record of `name` with any interrupted operation finished or undone first (the
    /// caller holds the volume's lock). `None` when there is no record (any more).
    ///
    /// # Errors
    /// The interrupted operation could not be settled; the record keeps its intent.
    pub(super) async fn settle(
        &self,
        op: &'static str,
        name: &VolumeName,
    ) -> Result<Option<VolumeRecord>, ServiceError> {
        match self.record(name) {
            Some(record) if record.pending.is_some() => self.settle_record(op, name, record).await,
            other => Ok(other),
        }
    }

    async fn settle_record(
        &self,
        op: &'static str,
        name: &VolumeName,
        mut record: VolumeRecord,
    ) -> Result<Option<VolumeRecord>, ServiceError> {
        match record.pending {
            None => Ok(Some(record)),
            Some(Pending::Creating) => match self.backend.controller.create(name, &record.options, true).await {
                Ok(()) => {
                    info!(volume = %name, "finished an interrupted create");
                    record.pending = None;
                    self.commit(op, record.clone()).await?;
                    Ok(Some(record))
                }
                Err(e) => {
                    warn!(volume = %name, error = %e, "could not finish an interrupted create; discarding what it left");
                    self.backend
                        .controller
                        .discard_partial(name, &record.options)
                        .await
                        .map_err(self.backend_err(op, name))?;
                    self.forget(op, name).await?;
                    Ok(None)
                }
            },
            Some(Pending::Removing) => {
                self.finish_remove(op, name, record).await?;
                Ok(self.record(name))
            }
            Some(Pending::Resizing { .. }) => match self.finish_resize(op, name, record).await {
                Ok(record) => {
                    info!(volume = %name, "finished an interrupted resize");
                    Ok(Some(record))
                }
                Err(e) => {
                    warn!(volume = %name, error = %e.chain(), "could not finish an interrupted resize; the volume keeps its recorded size");
                    Ok(self.record(name))
                }
            },
            Some(Pending::Modifying { .. }) => match self.finish_modify(op, name, record).await {
                Ok(record) => {
                    info!(volume = %name, "finished an interrupted modification");
                    Ok(Some(record))
                }
                Err(e) => {
                    warn!(volume = %name, error = %e.chain(), "could not finish an interrupted modification; the volume keeps its recorded settings");
                    Ok(self.record(name))
                }
            },
            Some(Pending::Moving { .. }) => match self.finish_move(op, name, record).await {
                Ok(record) => {
                    info!(volume = %name, "finished an interrupted move");
                    Ok(Some(record))
                }
                // A move undone for good, or one whose source could not be deleted, is settled.
                Err(e) if self.record(name).is_some_and(|r| r.pending.is_none()) => {
                    warn!(volume = %name, error = %e.chain(), "an interrupted move ended with an error");
                    Ok(self.record(name))
                }
                Err(e) => Err(e),
            },
            Some(Pending::Activating | Pending::Deactivating) if record.holder_count() > 0 => {
                let path = self.activate(name, &record.options).await.map_err(self.backend_err(op, name))?;
                tracing::debug!(volume = %name, path = %path.display(), "finished an interrupted activation");
                record.active = true;
                record.pending = None;
                self.commit(op, record.clone()).await?;
                Ok(Some(record))
            }
            Some(Pending::Activating | Pending::Deactivating) => {
                self.deactivate(name, &record.options).await.map_err(self.backend_err(op, name))?;
                info!(volume = %name, "finished an interrupted deactivation");
                record.active = false;
                record.pending = None;
                self.commit(op, record.clone()).await?;
                Ok(Some(record))
            }
        }
    }
}
