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
//! | `ebs.statusMaxAttempts` | `EBS_STATUSMAXATTEMPTS` | 10 | accepted for REX-Ray's configs; no longer limits a wait (time does) |
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
    /// REX-Ray's poll count per wait: read and checked for its configs, but no longer a limit
    /// (every wait is bounded by time: `status_timeout` and the caller's deadline).
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

/// Reads `ebs.*` values, noting every malformed one instead of stopping at the first.
struct Reader<'a> {
    /// The raw settings (lower-cased keys without `ebs.`).
    raw: &'a BTreeMap<String, String>,
    /// One entry per malformed value, in the order read.
    problems: Vec<BackendError>,
}

impl Reader<'_> {
    /// The trimmed value of `key` (spelled as documented); empty means unset.
    fn text(&self, key: &str) -> Option<String> {
        let value = self.raw.get(&key.to_ascii_lowercase())?.trim();
        (!value.is_empty()).then(|| value.to_owned())
    }

    /// The value of `key` through `parse`; a value it refuses is noted with `reason`.
    fn parse<T>(&mut self, key: &str, parse: impl FnOnce(&str) -> Option<T>, reason: &str) -> Option<T> {
        let value = self.text(key)?;
        let parsed = parse(&value);
        if parsed.is_none() {
            self.problems.push(invalid(key, &value, reason));
        }
        parsed
    }
}

impl EbsSettings {
    /// Parses `ServiceConfig::ebs` (lower-cased keys without `ebs.`). Empty values are unset.
    ///
    /// # Errors
    /// The first of [`EbsSettings::parse_all`]'s problems.
    pub fn parse(raw: &BTreeMap<String, String>) -> Result<Self, BackendError> {
        Self::parse_all(raw).map_err(|mut problems| problems.swap_remove(0))
    }

    /// Parses `ServiceConfig::ebs` like [`EbsSettings::parse`], checking every key.
    ///
    /// # Errors
    /// One [`BackendError::InvalidOption`] per malformed key (never an empty list), each naming
    /// its `ebs.*` key; an access key without its secret key (or the reverse) is one of them.
    pub fn parse_all(raw: &BTreeMap<String, String>) -> Result<Self, Vec<BackendError>> {
        let mut r = Reader { raw, problems: Vec::new() };
        let defaults = Self::default();
        let access_key = r.text("accessKey");
        let secret_key = r.text("secretKey");
        if access_key.is_some() != secret_key.is_some() {
            let key = if access_key.is_some() { "accessKey" } else { "secretKey" };
            r.problems.push(invalid(key, "…", "ebs.accessKey and ebs.secretKey must be set together"));
        }
        let types = format!("expected one of {}", VOLUME_TYPES.join(", "));
        let s = Self {
            access_key,
            secret_key,
            region: r.text("region"),
            endpoint: r.text("endpoint"),
            max_retries: r
                .parse("maxRetries", |v| v.parse().ok(), "expected a whole number")
                .unwrap_or(defaults.max_retries),
            kms_key_id: r.text("kmsKeyID"),
            tag: r.parse(
                "tag",
                |v| (!v.contains('/') && v.len() <= 64).then(|| v.to_owned()),
                "expected at most 64 characters and no '/'",
            ),
            status_max_attempts: r
                .parse(
                    "statusMaxAttempts",
                    |v| v.parse().ok().filter(|n| *n >= 1),
                    "expected a whole number, at least 1",
                )
                .unwrap_or(defaults.status_max_attempts),
            status_initial_delay: r
                .parse("statusInitialDelay", parse_duration, "expected a duration such as 100ms or 1s, above zero")
                .unwrap_or(defaults.status_initial_delay),
            status_timeout: r
                .parse("statusTimeout", parse_duration, "expected a duration such as 2m or 90s, above zero")
                .unwrap_or(defaults.status_timeout),
            use_large_device_range: r
                .parse("useLargeDeviceRange", parse_bool, "expected true or false")
                .unwrap_or(defaults.use_large_device_range),
            instance_id: r.parse(
                "instanceID",
                |v| v.starts_with("i-").then(|| v.to_owned()),
                "expected an instance ID such as i-0123456789abcdef0",
            ),
            availability_zone: r.text("availabilityZone"),
            device_links_dir: r
                .parse("deviceLinksDir", |v| v.starts_with('/').then(|| PathBuf::from(v)), "expected an absolute path")
                .unwrap_or(defaults.device_links_dir),
            default_volume_type: r.parse(
                "defaultVolumeType",
                |v| Some(v.to_ascii_lowercase()).filter(|t| VOLUME_TYPES.contains(&t.as_str())),
                &types,
            ),
        };
        if r.problems.is_empty() {
            Ok(s)
        } else {
            Err(r.problems)
        }
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
    fn every_bad_value_is_reported_in_one_pass() {
        let problems = EbsSettings::parse_all(&raw(&[
            ("secretkey", "s3cr3t"),
            ("maxretries", "-1"),
            ("region", "eu-west-1"),
            ("statustimeout", "soon"),
            ("defaultvolumetype", "gp9"),
        ]))
        .unwrap_err();
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| match p {
                BackendError::InvalidOption { key, .. } => key.as_str(),
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(keys, ["ebs.secretKey", "ebs.maxRetries", "ebs.statusTimeout", "ebs.defaultVolumeType"]);
        assert!(problems.iter().all(|p| !p.to_string().contains("s3cr3t")), "{problems:?}");
        let first = EbsSettings::parse(&raw(&[("maxretries", "-1"), ("statustimeout", "soon")])).unwrap_err();
        assert!(matches!(&first, BackendError::InvalidOption { key, .. } if key == "ebs.maxRetries"), "{first}");
    }

    #[test]
    fn empty_values_are_unset() {
        let s = EbsSettings::parse(&raw(&[("region", ""), ("accesskey", " "), ("secretkey", "")])).unwrap();
        assert_eq!(s.region, None);
        assert_eq!(s.access_key, None);
    }
}
