//! `rexray snapshot …`: through the daemon's admin socket when one answers, else on the service
//! opened in this process (see [`Target`]).
//!
//! `create` and `copy` wait until the snapshot is complete (at most `--timeout`) unless
//! `--runasync` is given; the wait runs where the operation ran.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::volume::{table, Format, Target};
use crate::config::Config;
use crate::protocol::snapshots::{
    CopyRequest, CreateRequest, IdRequest, ListRequest, ListResponse, Snapshot, SnapshotResponse, WaitRequest,
};

/// How long the quick snapshot calls (list, create, remove, copy) may take.
const CALL: Duration = Duration::from_secs(120);
/// Extra time the CLI gives the daemon beyond a wait's own deadline.
const WAIT_SLACK: Duration = Duration::from_secs(30);

/// `rexray snapshot`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  rexray snapshot ls\n  rexray snapshot create --volumeid data1 --snapshotname nightly"
)]
pub struct SnapshotArgs {
    /// The service (default: the first configured).
    #[arg(short = 's', long = "service", global = true, value_name = "NAME")]
    pub service: Option<String>,
    /// Output format.
    #[arg(short = 'f', long = "format", global = true, value_enum, default_value = "table")]
    pub format: Format,
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// List snapshots: those rexray made (in the `ebs.tag` namespace), every one the account
    /// owns (`--all`), or the given IDs.
    #[command(visible_aliases = ["get", "list"], after_help = "Examples:\n  rexray snapshot ls\n  rexray snapshot ls --all -f json\n  rexray snapshot ls snap-0123456789abcdef0")]
    Ls {
        /// Snapshot IDs (default: rexray's snapshots).
        ids: Vec<String>,
        /// Every snapshot this account owns in the region, not only rexray's.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Snapshot a volume (flushing its file system first when it is mounted on this host).
    #[command(
        visible_aliases = ["new"],
        after_help = "Examples:\n  rexray snapshot create --volumeid data1 --snapshotname nightly\n  rexray snapshot create --volumeid data1 --runasync"
    )]
    Create {
        /// The volume to snapshot (its name).
        #[arg(long = "volumeid", visible_alias = "volumename", value_name = "VOLUME")]
        volume: String,
        /// The snapshot's name (default: the volume's).
        #[arg(long = "snapshotname", value_name = "NAME")]
        snapshot_name: Option<String>,
        /// A description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove snapshots.
    #[command(visible_aliases = ["remove"], after_help = "Example:\n  rexray snapshot rm snap-0123456789abcdef0")]
    Rm {
        /// Snapshot IDs.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Copy a snapshot, within its region or to another one.
    #[command(
        after_help = "Example:\n  rexray snapshot copy --snapshotid snap-0123456789abcdef0 --destinationregion eu-west-1 --destinationsnapshotname data1-dr"
    )]
    Copy {
        /// The snapshot to copy.
        #[arg(long = "snapshotid", value_name = "ID")]
        snapshot_id: String,
        /// The copy's name (default: the source's).
        #[arg(long = "destinationsnapshotname", value_name = "NAME")]
        destination_name: Option<String>,
        /// The region to copy to (default: the source's).
        #[arg(long = "destinationregion", value_name = "REGION")]
        destination_region: Option<String>,
        /// A description (default: "Copy of <id> from <region>").
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// Whether and how long `create` and `copy` wait for the snapshot to complete.
#[derive(Debug, clap::Args)]
struct WaitArgs {
    /// Return as soon as the snapshot is started.
    #[arg(long = "runasync")]
    run_async: bool,
    /// The longest wait for the snapshot to complete (`90s`, `30m`, `2h`).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_timeout)]
    timeout: Duration,
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    let d = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e} (examples: 90s, 30m, 2h)"))?,
    };
    if d.is_zero() {
        return Err("the timeout must be longer than zero".into());
    }
    Ok(d)
}

impl Target {
    async fn snapshot_call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let reply = self.call(method, serde_json::to_value(body)?, timeout).await?;
        serde_json::from_value(reply).with_context(|| format!("malformed {method} reply from the daemon"))
    }

    fn local_err(e: crate::service::ServiceError) -> anyhow::Error {
        anyhow!(e.chain())
    }

    /// The snapshots `req` selects.
    async fn snapshot_list(&self, req: &ListRequest) -> anyhow::Result<Vec<Snapshot>> {
        match self {
            Target::Local(s) => Ok(s
                .snapshot_list(&req.filter())
                .await
                .map_err(Self::local_err)?
                .into_iter()
                .map(Snapshot::from)
                .collect()),
            Target::Daemon { .. } => {
                Ok(self.snapshot_call::<ListResponse>("Snapshot.List", req, CALL).await?.snapshots)
            }
        }
    }

    async fn snapshot_create(&self, req: &CreateRequest) -> anyhow::Result<Snapshot> {
        super::waiting::shown(&self.board(), &req.volume, self.snapshot_create_now(req)).await
    }

    async fn snapshot_create_now(&self, req: &CreateRequest) -> anyhow::Result<Snapshot> {
        match self {
            Target::Local(s) => {
                s.snapshot_create(&req.volume, &req.new_snapshot()).await.map(Snapshot::from).map_err(Self::local_err)
            }
            Target::Daemon { .. } => {
                Ok(self.snapshot_call::<SnapshotResponse>("Snapshot.Create", req, CALL).await?.snapshot)
            }
        }
    }

    async fn snapshot_remove(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => s.snapshot_remove(id).await.map_err(Self::local_err),
            Target::Daemon { .. } => {
                self.snapshot_call::<Value>("Snapshot.Remove", &IdRequest { id: id.to_owned() }, CALL).await.map(drop)
            }
        }
    }

    async fn snapshot_copy(&self, req: &CopyRequest) -> anyhow::Result<Snapshot> {
        super::waiting::shown(&self.board(), &req.id, self.snapshot_copy_now(req)).await
    }

    async fn snapshot_copy_now(&self, req: &CopyRequest) -> anyhow::Result<Snapshot> {
        match self {
            Target::Local(s) => {
                s.snapshot_copy(&req.id, &req.snapshot_copy()).await.map(Snapshot::from).map_err(Self::local_err)
            }
            Target::Daemon { .. } => {
                Ok(self.snapshot_call::<SnapshotResponse>("Snapshot.Copy", req, CALL).await?.snapshot)
            }
        }
    }

    async fn snapshot_wait(&self, snapshot: &Snapshot, timeout: Duration) -> anyhow::Result<Snapshot> {
        super::waiting::shown(&self.board(), &snapshot.id, self.snapshot_wait_now(snapshot, timeout)).await
    }

    async fn snapshot_wait_now(&self, snapshot: &Snapshot, timeout: Duration) -> anyhow::Result<Snapshot> {
        match self {
            Target::Local(s) => s
                .snapshot_wait(&snapshot.id, Some(&snapshot.region), timeout)
                .await
                .map(Snapshot::from)
                .map_err(Self::local_err),
            Target::Daemon { .. } => {
                let req = WaitRequest {
                    id: snapshot.id.clone(),
                    region: Some(snapshot.region.clone()),
                    timeout_seconds: timeout.as_secs().max(1),
                };
                Ok(self.snapshot_call::<SnapshotResponse>("Snapshot.Wait", &req, timeout + WAIT_SLACK).await?.snapshot)
            }
        }
    }
}

/// The snapshot table.
pub fn snapshot_table(snapshots: &[Snapshot]) -> String {
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            let state = match (&s.progress, s.state.as_str()) {
                (Some(p), "pending") => format!("pending ({p})"),
                _ => s.state.clone(),
            };
            vec![
                s.id.clone(),
                s.name.clone().unwrap_or_else(|| "-".into()),
                s.volume.clone().unwrap_or_else(|| s.volume_id.clone()),
                state,
                format!("{} GiB", s.size_gib),
                s.start_time.clone().unwrap_or_else(|| "-".into()),
                s.region.clone(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "VOLUME", "STATE", "SIZE", "STARTED", "REGION"], &rows)
}

fn print(format: Format, snapshots: &[Snapshot]) -> anyhow::Result<()> {
    if format == Format::Table {
        if !snapshots.is_empty() {
            outln!("{}", snapshot_table(snapshots));
        }
        Ok(())
    } else {
        format.print_json(&snapshots)
    }
}

/// Runs `rexray snapshot …`.
///
/// # Errors
/// The first failure (for `rm`: each failure is reported and the exit status is 1).
pub async fn run(config: &Config, args: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    let target = Target::open(config, args.service.as_deref()).await?;
    let format = args.format;
    match &args.command {
        SnapshotCommand::Ls { ids, all } => {
            let snapshots = target.snapshot_list(&ListRequest { ids: ids.clone(), all: *all }).await?;
            if format == Format::Table && snapshots.is_empty() {
                eprintln!("no snapshots{}", if *all { "" } else { " made by rexray (--all lists every one)" });
            }
            print(format, &snapshots)?;
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Create { volume, snapshot_name, description, wait } => {
            let req =
                CreateRequest { volume: volume.clone(), name: snapshot_name.clone(), description: description.clone() };
            let mut snapshot = target.snapshot_create(&req).await?;
            if !wait.run_async {
                snapshot = target.snapshot_wait(&snapshot, wait.timeout).await?;
            }
            print(format, &[snapshot])?;
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Rm { ids } => {
            let mut failed = 0;
            for id in ids {
                match target.snapshot_remove(id).await {
                    Ok(()) if format == Format::Table => outln!("{id}"),
                    Ok(()) => {}
                    Err(e) => {
                        eprintln!("rexray: {e:#}");
                        failed += 1;
                    }
                }
            }
            format.print_json(&json!({ "Removed": ids.len() - failed, "Failed": failed }))?;
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        SnapshotCommand::Copy { snapshot_id, destination_name, destination_region, description, wait } => {
            let req = CopyRequest {
                id: snapshot_id.clone(),
                name: destination_name.clone(),
                description: description.clone(),
                destination_region: destination_region.clone(),
            };
            let mut copy = target.snapshot_copy(&req).await?;
            if !wait.run_async {
                copy = target.snapshot_wait(&copy, wait.timeout).await?;
            }
            print(format, &[copy])?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_timeout("0").unwrap_err().contains("longer than zero"));
        assert!(parse_timeout("soon").unwrap_err().contains("examples"));
    }

    #[test]
    fn snapshot_rows() {
        let s = Snapshot {
            id: "snap-1".into(),
            name: Some("nightly".into()),
            volume: None,
            volume_id: "vol-9".into(),
            state: "pending".into(),
            progress: Some("40%".into()),
            size_gib: 8,
            description: String::new(),
            encrypted: false,
            start_time: None,
            region: "us-east-1".into(),
            tags: Default::default(),
        };
        assert_eq!(
            snapshot_table(&[s]),
            "ID      NAME     VOLUME  STATE          SIZE   STARTED  REGION\nsnap-1  nightly  vol-9   pending (40%)  8 GiB  -        us-east-1"
        );
    }
}
