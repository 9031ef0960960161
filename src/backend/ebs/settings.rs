//! The `ebs.*` settings, typed and checked when the backend is built (before any AWS call).
//!
//! | key | env | default | meaning |
//! |---|---|---|---|
//! | `ebs.accessKey` / `ebs.secretKey` | `EBS_ACCESSKEY` / `EBS_SECRETKEY` | the AWS credential chain | static credentials |
//! | `ebs.region` | `EBS_REGION` | the instance's region | region of the EC2 API |
//! | `ebs.endpoint` | `EBS_ENDPOINT` | `https://ec2.<region>.amazonaws.com` | EC2 API endpoint (an emulator in tests) |
//! | `ebs.maxRetries` | `EBS_MAXRETRIES` | 10 | retries of a throttled or failed EC2 call |
//! | `ebs.kmsKeyID` | `EBS_KMSKEYID` | AWS's default key | KMS key for volumes created with `encrypted=true` |
//! | `ebs.tag` | `EBS_TAG` | none | namespace: volume `v` is named `<tag>/v` in EC2 |
//! | `ebs.statusMaxAttempts` | `EBS_STATUSMAXATTEMPTS` | 10 | polls while waiting for a state change |
//! | `ebs.statusInitialDelay` | `EBS_STATUSINITIALDELAY` | 100ms | first delay between polls, doubled per poll |
//! | `ebs.statusTimeout` | `EBS_STATUSTIMEOUT` | 2m | hard deadline of every wait |
//! | `ebs.useLargeDeviceRange` | `EBS_USELARGEDEVICERANGE` | false | `/dev/xvd[b-c][a-z]` instead of `/dev/xvd[f-p]` |
//! | `ebs.instanceID` | `EBS_INSTANCEID` | instance metadata | this host's instance |
//! | `ebs.availabilityZone` | `EBS_AVAILABILITYZONE` | instance metadata | this host's AZ |
//! | `ebs.deviceLinksDir` | `EBS_DEVICELINKSDIR` | `/dev/disk/by-id` | where NVMe volume links appear |
//! | `ebs.defaultVolumeType` | `EBS_DEFAULTVOLUMETYPE` | gp3 | type when neither the volume nor `create.default.type` sets one |
//!
//! `ebs.nvmeBinPath` and `ebs.rexrayTag` are accepted for REX-Ray compatibility and unused: NVMe
//! volumes are found through their by-id links, with no `nvme` binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::backend::options::parse_bool;
use crate::backend::BackendError;

/// The volume types EC2 offers.
pub const VOLUME_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

/// The typed `ebs.*` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct EbsSettings {
    /// Static access key (with `secret_key`), else the default credential chain.
    pub access_key: Option<String>,
    /// Static secret key.
    pub secret_key: Option<String>,
    /// The region, if configured.
    pub region: Option<String>,
    /// The EC2 endpoint URL, if not AWS's.
    pub endpoint: Option<String>,
    /// Retries of a throttled or transiently failed call.
    pub max_retries: u32,
    /// KMS key for encrypted volumes that name none.
    pub kms_key_id: Option<String>,
    /// Name namespace (`<tag>/<name>`).
    pub tag: Option<String>,
    /// Polls per wait.
    pub status_max_attempts: u32,
    /// First delay between polls (doubled each poll).
    pub status_initial_delay: Duration,
    /// Deadline of each wait.
    pub status_timeout: Duration,
    /// Use `/dev/xvd[b-c][a-z]`.
    pub use_large_device_range: bool,
    /// This host's instance, overriding instance metadata.
    pub instance_id: Option<String>,
    /// This host's AZ, overriding instance metadata.
    pub availability_zone: Option<String>,
    /// Where `nvme-Amazon_Elastic_Block_Store_vol…` links appear.
    pub device_links_dir: PathBuf,
    /// Volume type default (below the volume's option and `create.default.type`).
    pub default_volume_type: Option<String>,
}

impl std::fmt::Debug for EbsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        f.debug_struct("EbsSettings")
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<redacted>"))
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("max_retries", &self.max_retries)
            .field("kms_key_id", &self.kms_key_id)
            .field("tag", &self.tag)
            .field("status_max_attempts", &self.status_max_attempts)
            .field("status_initial_delay", &self.status_initial_delay)
            .field("status_timeout", &self.status_timeout)
            .field("use_large_device_range", &self.use_large_device_range)
            .field("instance_id", &self.instance_id)
            .field("availability_zone", &self.availability_zone)
            .field("device_links_dir", &self.device_links_dir)
            .field("default_volume_type", &self.default_volume_type)
            .finish()
    }
}

impl Default for EbsSettings {
    fn default() -> Self {
        Self {
            access_key: None,
            secret_key: None,
            region: None,
            endpoint: None,
            max_retries: 10,
            kms_key_id: None,
            tag: None,
            status_max_attempts: 10,
            status_initial_delay: Duration::from_millis(100),
            status_timeout: Duration::from_secs(120),
            use_large_device_range: false,
            instance_id: None,
            availability_zone: None,
            device_links_dir: PathBuf::from("/dev/disk/by-id"),
            default_volume_type: None,
        }
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> BackendError {
    BackendError::InvalidOption { key: format!("ebs.{key}"), value: value.to_owned(), reason: reason.to_owned() }
}

impl EbsSettings {
    /// Parses `ServiceConfig::ebs` (lower-cased keys without `ebs.`). Empty values are unset.
    ///
    /// # Errors
    /// [`BackendError::InvalidOption`] naming the `ebs.*` key, for a malformed value or an
    /// access key without its secret key.
    pub fn parse(raw: &BTreeMap<String, String>) -> Result<Self, BackendError> {
        let get = |k: &str| raw.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned);
        let mut s = Self { access_key: get("accesskey"), secret_key: get("secretkey"), ..Self::default() };
        if s.access_key.is_some() != s.secret_key.is_some() {
            let (key, value) = if s.access_key.is_some() { ("accessKey", "…") } else { ("secretKey", "…") };
            return Err(invalid(key, value, "ebs.accessKey and ebs.secretKey must be set together"));
        }
        s.region = get("region");
        s.endpoint = get("endpoint");
        if let Some(v) = get("maxretries") {
            s.max_retries = v.parse().map_err(|_| invalid("maxRetries", &v, "expected a whole number"))?;
        }
        s.kms_key_id = get("kmskeyid");
        if let Some(tag) = get("tag") {
            if tag.contains('/') || tag.len() > 64 {
                return Err(invalid("tag", &tag, "expected at most 64 characters and no '/'"));
            }
            s.tag = Some(tag);
        }
        if let Some(v) = get("statusmaxattempts") {
            s.status_max_attempts = v
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("statusMaxAttempts", &v, "expected a whole number, at least 1"))?;
        }
        if let Some(v) = get("statusinitialdelay") {
            s.status_initial_delay = parse_duration(&v).ok_or_else(|| {
                invalid("statusInitialDelay", &v, "expected a duration such as 100ms or 1s, above zero")
            })?;
        }
        if let Some(v) = get("statustimeout") {
            s.status_timeout = parse_duration(&v)
                .ok_or_else(|| invalid("statusTimeout", &v, "expected a duration such as 2m or 90s, above zero"))?;
        }
        if let Some(v) = get("uselargedevicerange") {
            s.use_large_device_range =
                parse_bool(&v).ok_or_else(|| invalid("useLargeDeviceRange", &v, "expected true or false"))?;
        }
        if let Some(v) = get("instanceid") {
            if !v.starts_with("i-") {
                return Err(invalid("instanceID", &v, "expected an instance ID such as i-0123456789abcdef0"));
            }
            s.instance_id = Some(v);
        }
        s.availability_zone = get("availabilityzone");
        if let Some(v) = get("devicelinksdir") {
            if !v.starts_with('/') {
                return Err(invalid("deviceLinksDir", &v, "expected an absolute path"));
            }
            s.device_links_dir = PathBuf::from(v);
        }
        if let Some(v) = get("defaultvolumetype") {
            let lower = v.to_ascii_lowercase();
            if !VOLUME_TYPES.contains(&lower.as_str()) {
                return Err(invalid("defaultVolumeType", &v, &format!("expected one of {}", VOLUME_TYPES.join(", "))));
            }
            s.default_volume_type = Some(lower);
        }
        Ok(s)
    }

    /// The endpoint as a URL: a bare host gets `https://`.
    pub fn endpoint_url(&self) -> Option<String> {
        self.endpoint.as_ref().map(|e| if e.contains("://") { e.clone() } else { format!("https://{e}") })
    }
}

/// A Go-style duration (`100ms`, `2m`, `1m30s`) or a number of seconds. Zero is refused.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let d = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(value).ok()?,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_rexray() {
        let s = EbsSettings::parse(&BTreeMap::new()).unwrap();
        assert_eq!(s, EbsSettings::default());
        assert_eq!(s.max_retries, 10);
        assert_eq!(s.status_max_attempts, 10);
        assert_eq!(s.status_initial_delay, Duration::from_millis(100));
        assert_eq!(s.status_timeout, Duration::from_secs(120));
        assert_eq!(s.device_links_dir, PathBuf::from("/dev/disk/by-id"));
    }

    #[test]
    fn every_key_parses() {
        let s = EbsSettings::parse(&raw(&[
            ("accesskey", "AKIA"),
            ("secretkey", "s3cr3t"),
            ("region", "eu-west-1"),
            ("endpoint", "http://127.0.0.1:5000"),
            ("maxretries", "3"),
            ("kmskeyid", "arn:aws:kms:eu-west-1:1:key/k"),
            ("tag", "prod"),
            ("statusmaxattempts", "5"),
            ("statusinitialdelay", "250ms"),
            ("statustimeout", "1m30s"),
            ("uselargedevicerange", "true"),
            ("instanceid", "i-0abc"),
            ("availabilityzone", "eu-west-1b"),
            ("devicelinksdir", "/tmp/links"),
            ("defaultvolumetype", "IO2"),
            ("nvmebinpath", "/usr/sbin/nvme"),
            ("rexraytag", "x"),
        ]))
        .unwrap();
        assert_eq!(s.access_key.as_deref(), Some("AKIA"));
        assert_eq!(s.max_retries, 3);
        assert_eq!(s.tag.as_deref(), Some("prod"));
        assert_eq!(s.status_initial_delay, Duration::from_millis(250));
        assert_eq!(s.status_timeout, Duration::from_secs(90));
        assert!(s.use_large_device_range);
        assert_eq!(s.instance_id.as_deref(), Some("i-0abc"));
        assert_eq!(s.availability_zone.as_deref(), Some("eu-west-1b"));
        assert_eq!(s.device_links_dir, PathBuf::from("/tmp/links"));
        assert_eq!(s.default_volume_type.as_deref(), Some("io2"));
        assert_eq!(s.endpoint_url().as_deref(), Some("http://127.0.0.1:5000"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let s =
            EbsSettings::parse(&raw(&[("endpoint", "ec2.us-east-1.amazonaws.com"), ("statustimeout", "30")])).unwrap();
        assert_eq!(s.endpoint_url().as_deref(), Some("https://ec2.us-east-1.amazonaws.com"));
        assert_eq!(s.status_timeout, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (k, v, key) in [
            ("maxretries", "many", "ebs.maxRetries"),
            ("statusmaxattempts", "0", "ebs.statusMaxAttempts"),
            ("statusinitialdelay", "soon", "ebs.statusInitialDelay"),
            ("statustimeout", "0s", "ebs.statusTimeout"),
            ("uselargedevicerange", "maybe", "ebs.useLargeDeviceRange"),
            ("instanceid", "host-1", "ebs.instanceID"),
            ("devicelinksdir", "dev/disk", "ebs.deviceLinksDir"),
            ("defaultvolumetype", "gp9", "ebs.defaultVolumeType"),
            ("tag", "a/b", "ebs.tag"),
            ("accesskey", "AKIA", "ebs.accessKey"),
        ] {
            let err = EbsSettings::parse(&raw(&[(k, v)])).unwrap_err();
            assert!(matches!(&err, BackendError::InvalidOption { key: got, .. } if got == key), "{err}");
        }
    }

    #[test]
    fn empty_values_are_unset() {
        let s = EbsSettings::parse(&raw(&[("region", ""), ("accesskey", " "), ("secretkey", "")])).unwrap();
        assert_eq!(s.region, None);
        assert_eq!(s.access_key, None);
    }
}
