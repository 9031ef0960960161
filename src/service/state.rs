//! Durable per-volume state: one small JSON file per volume, written atomically.
//!
//! Each write is temp file + fsync + rename + fsync of the directory, and touches only the
//! volume's own file, so the cost of an operation does not grow with the number of volumes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::backend::Options;

/// What is kept about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The volume name.
    pub name: String,
    /// The backend that owns it (`vfs`, `loop`, …), to catch a config that changed driver.
    pub backend: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// The validated create options, with the defaults fixed at create time.
    pub options: Options,
    /// Docker mount IDs → how many times each is mounted.
    #[serde(default)]
    pub holders: BTreeMap<String, u32>,
    /// Whether the anonymous holder (a caller with no ID: dvdcli, Mesos) holds it.
    #[serde(default)]
    pub anonymous: bool,
    /// Whether the backend has the volume activated (published, staged and handed out) on
    /// this host.
    #[serde(default)]
    pub active: bool,
    /// The multi-step operation under way, written before its first side effect; `None` when
    /// the volume is at rest. A record found with one after a crash is finished or undone at
    /// start ([`Pending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// When the volume was last mounted here for its first holder or released by its last,
    /// RFC 3339; `None` when never (for finding orphans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    /// What a container orchestrator holds of the volume through the CSI front.
    #[serde(default, skip_serializing_if = "OrchestratorClaims::is_empty")]
    pub csi: OrchestratorClaims,
}

/// What an orchestrator holds of a volume through the CSI front: each claim is written before
/// the side effect it names and dropped once that is undone, so a crash leaves a claim for
/// something that may have happened (the orchestrator's retry finishes it, or its undo drops
/// it), never a side effect without a claim. While any claim stands, the Docker front leaves
/// the volume alone (no Mount, no Remove, no release at start), and the reverse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorClaims {
    /// Nodes it is published to (ControllerPublishVolume) → what the node was told.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, crate::backend::PublishContext>,
    /// Where it is staged on this host (NodeStageVolume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<PathBuf>,
    /// Where it is published on this host (NodePublishVolume) → read-only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<PathBuf, bool>,
    /// Whether it is staged for raw block access (its device handed out, no file system).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
}

impl OrchestratorClaims {
    /// Whether the orchestrator holds nothing.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.staged.is_none() && self.targets.is_empty()
    }

    /// What the orchestrator holds, in words (for a refusal).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.nodes.is_empty() {
            let nodes: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
            parts.push(format!("published to {}", nodes.join(", ")));
        }
        if let Some(path) = &self.staged {
            parts.push(format!("staged at {}", path.display()));
        }
        if !self.targets.is_empty() {
            parts.push(format!("published at {} target(s)", self.targets.len()));
        }
        parts.join("; ")
    }
}

/// A multi-step operation under way on a volume, recorded before its first side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pending {
    /// Being created: nothing was handed out yet. Finished (the backend's create, resumed) or,
    /// when that fails, what it left is discarded.
    Creating,
    /// The first holder's mount is under way: the holder is not recorded yet. Finished when the
    /// record has holders, else undone.
    Activating,
    /// The last holder is released and the volume is being torn down: finished.
    Deactivating,
    /// Being removed: finished.
    Removing,
    /// Being grown to `size_gib` GiB: finished (growing is idempotent), or dropped when that
    /// fails.
    Resizing {
        /// The size asked for.
        size_gib: u64,
    },
    /// Being changed in place to the options `target` (type, IOPS, throughput): finished
    /// (the change is idempotent), or dropped when the storage refuses it.
    Modifying {
        /// The volume's options once changed.
        target: Options,
    },
    /// Being moved to another availability zone as `plan` says: finished (every step is
    /// found again in the storage), or dropped once the backend has undone it.
    Moving {
        /// What the backend planned.
        plan: crate::backend::Relocation,
        /// Whether the old volume is deleted once the new one has the name.
        delete_source: bool,
    },
}

impl Pending {
    /// The word `docker volume inspect` shows.
    pub fn as_str(&self) -> &'static str {
        match self {
            Pending::Creating => "creating",
            Pending::Activating => "activating",
            Pending::Deactivating => "deactivating",
            Pending::Removing => "removing",
            Pending::Resizing { .. } => "resizing",
            Pending::Modifying { .. } => "modifying",
            Pending::Moving { .. } => "moving",
        }
    }
}

impl VolumeRecord {
    /// How many holders in all.
    pub fn holder_count(&self) -> u64 {
        self.holders.values().fold(u64::from(self.anonymous), |sum, c| sum.saturating_add(u64::from(*c)))
    }
}

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A state file or directory could not be read or written.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("encode state of volume {name:?}")]
    Encode {
        /// The volume.
        name: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The file in a state directory that holds the boot ID of the last open.
const BOOT_ID_FILE: &str = "boot_id";

/// The state directory of one service.
#[derive(Debug)]
pub struct StateStore {
    /// The state directory.
    dir: PathBuf,
    /// `<dir>/volumes/<name>`: one file per volume.
    volumes: PathBuf,
    /// `<dir>/tmp`: where new versions are written before the rename.
    tmp: PathBuf,
    /// Makes temp file names unique within the process.
    counter: AtomicU64,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { op, path, source }
}

impl StateStore {
    /// Opens (creating if needed) the state directory `dir`.
    ///
    /// # Errors
    /// The directories could not be created.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let volumes = dir.join("volumes");
        let tmp = dir.join("tmp");
        for d in [&volumes, &tmp] {
            fs::create_dir_all(d).map_err(io_err("create state directory", d))?;
        }
        // Leftovers of writes interrupted by a crash; the renamed files are the truth.
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Self { dir: dir.to_path_buf(), volumes, tmp, counter: AtomicU64::new(0) })
    }

    /// Whether this state was last opened during boot `current` of the host (so a volume its
    /// holders still use lost its mount to a daemon restart, not to a reboot); records this
    /// boot. Unknown (no boot ID, first open) counts as another boot.
    pub fn record_boot(&self, current: Option<&str>) -> bool {
        let Some(current) = current else {
            return false;
        };
        let file = self.dir.join(BOOT_ID_FILE);
        let recorded = fs::read_to_string(&file).ok();
        let same = recorded.as_deref().map(str::trim) == Some(current);
        if !same {
            let tmp = self.dir.join(format!("{BOOT_ID_FILE}.tmp"));
            if let Err(e) = fs::write(&tmp, current).and_then(|()| fs::rename(&tmp, &file)) {
                tracing::warn!(file = %file.display(), error = %e, "could not record the boot ID");
            }
        }
        same
    }

    /// Reads every record. A file that cannot be parsed is logged and left in place (never
    /// deleted), and its volume is skipped.
    ///
    /// # Errors
    /// The directory could not be listed.
    pub fn load(&self) -> Result<Vec<VolumeRecord>, StateError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.volumes).map_err(io_err("list state directory", &self.volumes))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list state directory", &self.volumes))?;
            let path = entry.path();
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<VolumeRecord>(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) if path.file_name() == Some(std::ffi::OsStr::new(&record.name)) => out.push(record),
                Ok(record) => {
                    tracing::error!(path = %path.display(), name = %record.name, "state file name does not match the volume it holds; skipped");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable state file; volume skipped, file kept");
                }
            }
        }
        Ok(out)
    }

    /// Writes `record` durably.
    ///
    /// # Errors
    /// The record could not be written; the previous version is intact.
    pub fn save(&self, record: &VolumeRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|source| StateError::Encode { name: record.name.clone(), source })?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(&bytes).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("sync", &tmp))?;
            let dest = self.volumes.join(&record.name);
            fs::rename(&tmp, &dest).map_err(io_err("rename into place", &dest))?;
            self.sync_dir()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes the record of `name` durably. A missing record is success.
    ///
    /// # Errors
    /// The file could not be removed.
    pub fn delete(&self, name: &str) -> Result<(), StateError> {
        let path = self.volumes.join(name);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        File::open(&self.volumes).and_then(|d| d.sync_all()).map_err(io_err("sync", &self.volumes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> VolumeRecord {
        VolumeRecord {
            name: name.into(),
            backend: "vfs".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            options: Options::from([("size".into(), "1".into())]),
            holders: BTreeMap::from([("abc".into(), 2)]),
            anonymous: true,
            active: true,
            pending: None,
            last_used: None,
            csi: OrchestratorClaims::default(),
        }
    }

    #[test]
    fn save_load_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.save(&record("v1")).unwrap();
        store.save(&record("a b@c")).unwrap();
        let mut again = record("v1");
        again.holders.clear();
        store.save(&again).unwrap();
        let reopened = StateStore::open(dir.path()).unwrap();
        let mut all = reopened.load().unwrap();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(all, vec![record("a b@c"), again]);
        assert_eq!(all[0].holder_count(), 3);
        reopened.delete("v1").unwrap();
        reopened.delete("v1").unwrap();
        assert_eq!(reopened.load().unwrap().len(), 1);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_file_is_skipped_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.save(&record("good")).unwrap();
        fs::write(dir.path().join("volumes/bad"), b"{not json").unwrap();
        assert_eq!(store.load().unwrap(), vec![record("good")]);
        assert!(dir.path().join("volumes/bad").exists());
    }

    #[test]
    fn pending_operations_are_kept_and_old_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut r = record("v");
        r.pending = Some(Pending::Removing);
        store.save(&r).unwrap();
        let text = fs::read_to_string(dir.path().join("volumes/v")).unwrap();
        assert!(text.contains("\"pending\": \"removing\""), "{text}");
        assert_eq!(store.load().unwrap(), vec![r]);
        fs::write(
            dir.path().join("volumes/old"),
            br#"{"name":"old","backend":"vfs","created_at":"","options":{},"holders":{"a":4294967295},"anonymous":true}"#,
        )
        .unwrap();
        let old = store.load().unwrap().into_iter().find(|r| r.name == "old").unwrap();
        assert_eq!(old.pending, None);
        assert_eq!(old.holder_count(), 4_294_967_296, "counts never wrap");
    }
}
