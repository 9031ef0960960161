//! What every EBS operation shares: the settings, the connection (identity and EC2 client,
//! made on first use), lookups by name, the cache, device names, the retry policy and the
//! batched volume-state polls.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use super::api::{self, CloudError, Ec2Api, Volume, VolumeQuery};
use super::cache::VolumeCache;
use super::devices::DeviceAllocator;
use super::errors::cloud_failed;
use super::identity::{self, Identity};
use super::naming::{filter_literal, Naming, OWNER_TAG, OWNER_VALUE};
use super::node::EbsDevices;
use super::options::EbsDefaults;
use super::settings::EbsSettings;
use super::wait::{Poll, RetryPolicy, StatusWait, WaitError};
use super::watch::VolumeWatch;
use super::{cloud, CloudParts};
use crate::backend::BackendError;
use crate::name::VolumeName;

/// Volumes per DescribeVolumes page when listing (EC2's maximum with filters).
const LIST_PAGE: u32 = 500;

/// How old an instance's description may be for choosing a device name without asking EC2
/// again: device names change only by attachments, this daemon's own are applied to it, and a
/// name EC2 reports in use after all makes the attach ask again.
pub(super) const INSTANCE_FRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// What a wait for this host watches: the device of `volume_id`, attached as `device`, is
/// `present` (attach) or gone (detach).
#[derive(Debug, Clone)]
pub(super) struct LocalSignal {
    pub(super) volume_id: String,
    pub(super) device: String,
    pub(super) present: bool,
}

/// Everything the EBS operations share.
pub(super) struct Core {
    pub(super) settings: EbsSettings,
    /// How Docker names map to Name tags.
    pub(super) naming: Naming,
    /// `mount.preempt`.
    pub(super) preempt: bool,
    /// Config defaults for the EBS options.
    pub(super) defaults: EbsDefaults,
    /// Instance metadata (used only when the settings leave gaps) and the EC2 client factory.
    cloud: Arc<CloudParts>,
    /// The identity and the client, made on first use (after the socket listens).
    connected: tokio::sync::OnceCell<(Identity, Arc<dyn Ec2Api>)>,
    /// What EC2 last said, by Docker name.
    pub(super) cache: VolumeCache,
    /// Device names.
    pub(super) devices: DeviceAllocator,
    /// Retries of throttled and transient calls.
    pub(super) retry: Arc<RetryPolicy>,
    /// Modifications started or seen, for the volumes' status.
    pub(super) modifications: super::modify::Modifications,
    /// Volume-state polls and by-name look-ups, batched across concurrent operations.
    watch: VolumeWatch,
    /// DescribeInstances, shared by concurrent attaches to one instance.
    pub(super) instances: super::watch::InstanceWatch,
    /// This host's devices: a wait for an attach to (or a detach from) this instance watches
    /// for the device to appear (or go) and then asks EC2 once.
    local: Option<Arc<EbsDevices>>,
    /// Client-token suffix per Name tag (bumped after a mismatch or a vanished volume).
    token_suffix: Mutex<BTreeMap<String, u32>>,
    /// EC2 clients of other regions (snapshot copies), by region.
    pub(super) regional: tokio::sync::Mutex<BTreeMap<String, Arc<dyn Ec2Api>>>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("settings", &self.settings)
            .field("preempt", &self.preempt)
            .field("connected", &self.connected.get().map(|(i, _)| i))
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(super) fn new(
        settings: EbsSettings,
        preempt: bool,
        defaults: EbsDefaults,
        cloud: Arc<CloudParts>,
        local: Option<Arc<EbsDevices>>,
    ) -> Self {
        Self {
            naming: Naming::new(&settings),
            devices: DeviceAllocator::new(settings.use_large_device_range),
            retry: Arc::new(RetryPolicy::new(settings.max_retries)),
            modifications: super::modify::Modifications::default(),
            watch: VolumeWatch::default(),
            instances: super::watch::InstanceWatch::default(),
            local,
            settings,
            preempt,
            defaults,
            cloud,
            connected: tokio::sync::OnceCell::new(),
            cache: VolumeCache::default(),
            token_suffix: Mutex::default(),
            regional: tokio::sync::Mutex::default(),
        }
    }

    /// The polling schedule of the status waits (`ebs.status*`).
    pub(super) fn status_wait(&self) -> StatusWait {
        StatusWait {
            initial_delay: self.settings.status_initial_delay,
            max_delay: super::wait::MAX_POLL_DELAY,
            timeout: self.settings.status_timeout,
        }
    }

    /// Makes an EC2 client for `conn`.
    pub(super) async fn client(&self, conn: cloud::Connection) -> Arc<dyn Ec2Api> {
        (self.cloud.factory)(conn).await
    }

    /// The identity and the EC2 client, made on the first call.
    pub(super) async fn connect(&self) -> Result<(Identity, Arc<dyn Ec2Api>), BackendError> {
        let pair = self.connected.get_or_try_init(|| self.first_connect()).await?;
        Ok((pair.0.clone(), Arc::clone(&pair.1)))
    }

    /// Finds out who this instance is and makes the EC2 client (see [`Self::connect`]).
    async fn first_connect(&self) -> Result<(Identity, Arc<dyn Ec2Api>), BackendError> {
        let found = identity::discover(&self.settings, self.cloud.metadata.as_ref())
            .await
            .map_err(|e| BackendError::invalid(format!("find this instance: {e}")))?;
        let conn = cloud::Connection {
            region: found.region.clone(),
            endpoint: self.settings.endpoint_url(),
            static_credentials: self.settings.access_key.clone().zip(self.settings.secret_key.clone()),
        };
        tracing::debug!(?conn, "connecting to EC2");
        let api = self.client(conn).await;
        let availability_zone = match found.availability_zone {
            Some(az) => az,
            None => {
                let id = found.instance_id.clone();
                let instance =
                    self.retry.run("DescribeInstances", || api.describe_instance(&id)).await.map_err(|e| {
                        super::errors::cloud_error(format!("find the availability zone of instance {id}"), &e, "")
                    })?;
                instance.availability_zone
            }
        };
        let identity = Identity { instance_id: found.instance_id, availability_zone, region: found.region };
        tracing::info!(instance = %identity.instance_id, az = %identity.availability_zone, region = %identity.region, "EC2 identity");
        Ok((identity, api))
    }

    /// Every page of a DescribeVolumes query.
    pub(super) async fn describe_all(
        &self,
        api: &dyn Ec2Api,
        mut query: VolumeQuery,
    ) -> Result<Vec<Volume>, CloudError> {
        let mut all = Vec::new();
        loop {
            let page = self.retry.run("DescribeVolumes", || api.describe_volumes(&query)).await?;
            all.extend(page.volumes);
            match page.next_token {
                Some(token) => query.next_token = Some(token),
                None => return Ok(all),
            }
        }
    }

    /// The region's volumes named `name` (any AZ; not deleting or deleted), cached.
    ///
    /// Look-ups through this region's client join the batched rounds ([`VolumeWatch`]), so
    /// concurrent Mounts share their DescribeVolumes.
    pub(super) async fn lookup(&self, api: &dyn Ec2Api, name: &VolumeName) -> Result<Vec<Volume>, BackendError> {
        let tag = self.naming.name_tag(name);
        let described = match self.connected.get() {
            Some((_, main)) if std::ptr::addr_eq(std::ptr::from_ref(api), Arc::as_ptr(main)) => {
                self.watch.named(main, &self.retry, &tag).await
            }
            _ => {
                self.describe_all(api, VolumeQuery::filtered(vec![("tag:Name".into(), vec![filter_literal(&tag)])]))
                    .await
            }
        };
        let found = described
            .map_err(|e| cloud_failed("look up", name, None, &e))?
            .into_iter()
            .filter(|v| !matches!(v.state, api::VolumeState::Deleting | api::VolumeState::Deleted))
            .collect::<Vec<_>>();
        self.cache.put(name.as_str(), found.clone());
        Ok(found)
    }

    /// At most one volume, or an error listing them all.
    pub(super) fn one(&self, name: &VolumeName, mut found: Vec<Volume>) -> Result<Option<Volume>, BackendError> {
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(BackendError::AlreadyExists {
                what: format!(
                    "{n} EC2 volumes are named {}: {}",
                    self.naming.name_tag(name),
                    found
                        .iter()
                        .map(|v| format!("{} ({}, {})", v.id, v.availability_zone, v.state.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                mismatch: "remove or rename all but one".into(),
            }),
        }
    }

    /// The one volume named `name`, or [`BackendError::NotFound`].
    pub(super) async fn require_one(
        &self,
        api: &dyn Ec2Api,
        ident: &Identity,
        name: &VolumeName,
    ) -> Result<Volume, BackendError> {
        let found = self.lookup(api, name).await?;
        self.one(name, found)?.ok_or_else(|| {
            BackendError::not_found(format!(
                "volume {name} does not exist in EC2 region {} (no volume is named {})",
                ident.region,
                self.naming.name_tag(name)
            ))
        })
    }

    /// The client token for a Name tag (with its suffix, if bumped).
    pub(super) fn client_token(&self, name_tag: &str) -> String {
        let suffix = self.token_suffix.lock().expect("token map poisoned").get(name_tag).copied().unwrap_or(0);
        if suffix == 0 {
            super::naming::client_token(name_tag)
        } else {
            super::naming::client_token(&format!("{name_tag}-{suffix}"))
        }
    }

    /// Moves the client token of a Name tag on (its last one names a dead volume).
    pub(super) fn bump_token(&self, name_tag: &str) {
        *self.token_suffix.lock().expect("token map poisoned").entry(name_tag.to_owned()).or_insert(0) += 1;
    }

    /// What a wait for volume `id` (attached as `device`) to attach to (`present`) or detach
    /// from `instance` watches on this host: only when `instance` is this host's (and
    /// [`Self::poll_volume`] watches only where this core has the host's devices).
    pub(super) fn local_signal(&self, instance: &str, id: &str, device: &str, present: bool) -> Option<LocalSignal> {
        let here = self.connected.get().is_some_and(|(ident, _)| ident.instance_id == instance);
        here.then(|| LocalSignal { volume_id: id.to_owned(), device: device.to_owned(), present })
    }

    /// Instance `id` as EC2 describes it: through this region's client, shared with the
    /// concurrent asks for it ([`super::watch::InstanceWatch`]).
    pub(super) async fn describe_instance(&self, api: &dyn Ec2Api, id: &str) -> Result<api::Instance, CloudError> {
        match self.connected.get() {
            Some((_, main)) if std::ptr::addr_eq(std::ptr::from_ref(api), Arc::as_ptr(main)) => {
                self.instances.describe(main, &self.retry, id).await
            }
            _ => self.retry.run("DescribeInstances", || api.describe_instance(id)).await,
        }
    }

    /// Instance `id` as EC2 described it at most [`INSTANCE_FRESH`] ago through this region's
    /// client, with this daemon's own attachments since applied; `None` when not known.
    pub(super) fn recent_instance(&self, api: &dyn Ec2Api, id: &str) -> Option<api::Instance> {
        match self.connected.get() {
            Some((_, main)) if std::ptr::addr_eq(std::ptr::from_ref(api), Arc::as_ptr(main)) => {
                self.instances.recent(id, INSTANCE_FRESH)
            }
            _ => None,
        }
    }

    /// Volume `id` as the next batched poll round sees it (`None`: EC2 does not know it).
    pub(super) async fn describe_polled(&self, id: &str) -> Result<Option<Volume>, CloudError> {
        let Some((_, api)) = self.connected.get() else {
            return Err(CloudError::transient("no EC2 client yet"));
        };
        self.watch.describe(api, &self.retry, id).await
    }

    /// Polls volume `id` (batched with other waits) until `check` says ready, or says it
    /// failed (`Ready(Err(why))`). With `local`, the host is watched between polls.
    pub(super) async fn poll_volume<T>(
        &self,
        id: &str,
        local: Option<LocalSignal>,
        mut check: impl FnMut(Option<&Volume>) -> Poll<Result<T, String>>,
    ) -> Result<T, WaitError<CloudError>> {
        let signal = local.and_then(|l| self.local.clone().map(|devices| (devices, l)));
        let look = signal.map(|(devices, l)| {
            move || {
                let (devices, l) = (Arc::clone(&devices), l.clone());
                async move { devices.present(&l.volume_id, &l.device).await == l.present }
            }
        });
        // Each poll's future borrows `check` (it keeps state across polls); the lock is taken
        // only after the await, never across it.
        let check = Mutex::new(&mut check);
        let polled = self
            .status_wait()
            .run_signalled(
                || async {
                    let seen = self.describe_polled(id).await?;
                    let mut check = check.lock().expect("check poisoned");
                    Ok((*check)(seen.as_ref()))
                },
                look,
            )
            .await?;
        polled.map_err(|why| WaitError::Failed(CloudError::other(why)))
    }

    /// Refreshes the cache with one paginated DescribeVolumes on the ownership tag.
    pub(super) async fn refresh(&self, force: bool) -> Result<(), BackendError> {
        let Some(refresh) = self.cache.begin_refresh(force) else {
            return Ok(());
        };
        let result = async {
            let (_, api) = self.connect().await?;
            let mut filters = vec![(format!("tag:{OWNER_TAG}"), vec![OWNER_VALUE.to_owned()])];
            if let Some(tag) = self.naming.namespace() {
                filters.push(("tag:Name".into(), vec![format!("{}/*", filter_literal(tag))]));
            }
            let query = VolumeQuery { filters, max_results: Some(LIST_PAGE), ..VolumeQuery::default() };
            let volumes = self
                .describe_all(api.as_ref(), query)
                .await
                .map_err(|e| super::errors::cloud_error("list EBS volumes".into(), &e, ""))?;
            let mut map: BTreeMap<String, Vec<Volume>> = BTreeMap::new();
            for v in volumes {
                if matches!(v.state, api::VolumeState::Deleting | api::VolumeState::Deleted) {
                    continue;
                }
                if let Some(n) = v.name_tag().and_then(|t| self.naming.docker_name(t)) {
                    map.entry(n.to_string()).or_default().push(v);
                }
            }
            Ok::<_, BackendError>(map)
        }
        .await;
        match result {
            Ok(map) => {
                tracing::debug!(volumes = map.len(), "refreshed the EBS volume cache");
                refresh.finish(Ok(map));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the EBS volume cache; keeping what it holds");
                refresh.finish(Err(e.to_string()));
                Err(e)
            }
        }
    }
}
