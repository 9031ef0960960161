//! EBS create options: on top of the block options (`size`, `fsType`, `mkfsOptions`,
//! `mountOptions`, `uid`, `gid`, `mode`), these. Keys are case-insensitive.
//!
//! | option | aliases | value | default |
//! |---|---|---|---|
//! | `volumeType` | `type`, `volumetype` | gp2, gp3, io1, io2, st1, sc1, standard | `create.default.type`, `ebs.defaultVolumeType`, gp3 |
//! | `iops` | `IOPS` | whole number (io1, io2, gp3 only) | `create.default.IOPS` for io1/io2 |
//! | `throughput` | | MiB/s (gp3 only) | EC2's (125) |
//! | `encrypted` | | true/false | false (true with a KMS key) |
//! | `kmsKeyID` | `encryptionKey`, `kmsKeyId` | key ID, alias or ARN | `ebs.kmsKeyID` when encrypted |
//! | `availabilityZone` | `az` | AZ name | `create.default.availabilityZone`, this instance's |
//! | `snapshotID` | `snapshotId` | `snap-…` | none (size then defaults to the snapshot's) |
//! | `tags` | | `k=v;k2=v2` | none |
//!
//! Every check runs here, before any AWS call.

use std::collections::BTreeMap;

use super::settings::VOLUME_TYPES;
use crate::backend::options::{Kind, OptionSpec, Options};
use crate::backend::BackendError;

/// Tag keys this backend sets itself; `tags` may not use them.
pub const RESERVED_TAG_PREFIX: &str = "rexray-rs/";

/// The EBS options, beyond the block options.
pub const EBS_SPECS: &[OptionSpec] = &[
    OptionSpec::aliased("volumeType", &["type", "volumetype"], Kind::Choice(VOLUME_TYPES)),
    OptionSpec::new("iops", Kind::Count),
    OptionSpec::new("throughput", Kind::Count),
    OptionSpec::new("encrypted", Kind::Bool),
    OptionSpec::aliased("kmsKeyID", &["encryptionKey"], Kind::Text),
    OptionSpec::aliased("availabilityZone", &["az"], Kind::Text),
    OptionSpec::aliased("snapshotID", &["snapshotId"], Kind::Text),
    OptionSpec::new("tags", Kind::Text),
];

/// Config defaults that feed the EBS options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EbsDefaults {
    /// `create.default.type`, else `ebs.defaultVolumeType`.
    pub volume_type: Option<String>,
    /// `create.default.IOPS`.
    pub iops: Option<u64>,
    /// `create.default.availabilityZone`.
    pub availability_zone: Option<String>,
}

/// A volume's EBS options, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbsOptions {
    /// Size in GiB; `None` = the snapshot's size.
    pub size_gib: Option<u64>,
    /// The volume type.
    pub volume_type: String,
    /// IOPS.
    pub iops: Option<u64>,
    /// Throughput, MiB/s.
    pub throughput: Option<u64>,
    /// Encrypt.
    pub encrypted: bool,
    /// The KMS key named by the volume.
    pub kms_key_id: Option<String>,
    /// The AZ named by the volume or the config (`None` = this instance's).
    pub availability_zone: Option<String>,
    /// Create from this snapshot.
    pub snapshot_id: Option<String>,
    /// User tags.
    pub tags: BTreeMap<String, String>,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidOption { key: key.to_owned(), value: value.to_owned(), reason: reason.into() }
}

/// Size limits (GiB) per type.
fn size_range(volume_type: &str) -> (u64, u64) {
    match volume_type {
        "io1" => (4, 16_384),
        "io2" => (4, 65_536),
        "st1" | "sc1" => (125, 16_384),
        "standard" => (1, 1_024),
        _ => (1, 16_384), // gp2, gp3
    }
}

/// IOPS limits per type, for the types that take IOPS.
pub fn iops_range(volume_type: &str) -> Option<(u64, u64)> {
    match volume_type {
        "io1" => Some((100, 64_000)),
        "io2" => Some((100, 256_000)),
        "gp3" => Some((3_000, 80_000)),
        _ => None,
    }
}

/// Parses `k=v;k2=v2` (also `,`-separated) into tags, checking EC2's limits.
///
/// # Errors
/// A reason naming the offending tag.
pub fn parse_tags(value: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for part in value.split([';', ',']).map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.chars().count() > 128 {
            return Err(format!("tag key {k:?} must be 1 to 128 characters"));
        }
        if v.chars().count() > 256 {
            return Err(format!("the value of tag {k:?} is longer than 256 characters"));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(format!("tag key {k:?}: the aws: prefix is reserved by AWS"));
        }
        if k == "Name" || k.starts_with(RESERVED_TAG_PREFIX) {
            return Err(format!("tag key {k:?} is set by rexray itself"));
        }
        if tags.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("tag key {k:?} is given twice"));
        }
    }
    // EC2 allows 50 tags; rexray sets up to 8 of its own.
    if tags.len() > 40 {
        return Err(format!("{} tags given; at most 40 are allowed", tags.len()));
    }
    Ok(tags)
}

/// Checks the EBS options of a normalized option map, fills in `volumeType` (and `iops` for
/// io1/io2 from the config) and returns them canonical. `size_given` says whether the caller
/// named a size (else, with a snapshot, the stored size is dropped: the snapshot's size wins).
///
/// # Errors
/// [`BackendError::InvalidOption`] naming the key.
pub fn complete(mut opts: Options, size_given: bool, defaults: &EbsDefaults) -> Result<Options, BackendError> {
    let volume_type = complete_type(&mut opts, defaults)?;
    if let Some(snap) = opts.get("snapshotID") {
        if !is_snapshot_id(snap) {
            return Err(invalid("snapshotID", snap, "expected a snapshot ID such as snap-0123456789abcdef0"));
        }
        if !size_given {
            opts.remove("size");
        }
    }
    if matches!(volume_type.as_str(), "io1" | "io2") && !opts.contains_key("iops") {
        let Some(iops) = defaults.iops else {
            return Err(invalid("iops", "", format!("volume type {volume_type} needs iops (e.g. -o iops=3000)")));
        };
        opts.insert("iops".into(), iops.to_string());
    }
    complete_encryption(&mut opts)?;
    if let Some(az) = opts.get("availabilityZone") {
        if !is_zone(az) {
            return Err(invalid("availabilityZone", az, "expected an availability zone such as us-east-1a"));
        }
    }
    if let Some(value) = opts.get("tags") {
        let tags = parse_tags(value).map_err(|reason| invalid("tags", value, reason))?;
        if tags.is_empty() {
            opts.remove("tags");
        } else {
            opts.insert("tags".into(), tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";"));
        }
    }
    EbsOptions::from_options(&opts, defaults)?;
    Ok(opts)
}

/// The volume's type, filled in from the config's default (or gp3) when the options give none.
fn complete_type(opts: &mut Options, defaults: &EbsDefaults) -> Result<String, BackendError> {
    if let Some(t) = opts.get("volumeType") {
        return Ok(t.clone());
    }
    let t = defaults.volume_type.clone().unwrap_or_else(|| "gp3".into()).to_ascii_lowercase();
    if !VOLUME_TYPES.contains(&t.as_str()) {
        return Err(invalid(
            "volumeType",
            &t,
            format!("the configured default type is not one of {}", VOLUME_TYPES.join(", ")),
        ));
    }
    opts.insert("volumeType".into(), t.clone());
    Ok(t)
}

/// A KMS key makes the volume encrypted (and an explicit `encrypted=false` beside it an error).
fn complete_encryption(opts: &mut Options) -> Result<(), BackendError> {
    let Some(kms) = opts.get("kmsKeyID") else { return Ok(()) };
    if kms.is_empty() || kms.contains(char::is_whitespace) {
        return Err(invalid("kmsKeyID", kms, "expected a KMS key ID, alias or ARN"));
    }
    if opts.get("encrypted").map(String::as_str) == Some("false") {
        return Err(invalid("encrypted", "false", "a kmsKeyID is given, so the volume must be encrypted"));
    }
    opts.insert("encrypted".into(), "true".into());
    Ok(())
}

impl EbsOptions {
    /// Reads stored options back, checking the combinations EC2 would refuse.
    ///
    /// # Errors
    /// [`BackendError::InvalidOption`] naming the key.
    pub fn from_options(opts: &Options, defaults: &EbsDefaults) -> Result<Self, BackendError> {
        let volume_type =
            opts.get("volumeType").cloned().or_else(|| defaults.volume_type.clone()).unwrap_or_else(|| "gp3".into());
        let num = |key: &str| -> Result<Option<u64>, BackendError> {
            opts.get(key).map(|v| v.parse::<u64>().map_err(|_| invalid(key, v, "expected a whole number"))).transpose()
        };
        let size_gib = num("size")?;
        if let Some(size) = size_gib {
            let (min, max) = size_range(&volume_type);
            if !(min..=max).contains(&size) {
                return Err(invalid(
                    "size",
                    &size.to_string(),
                    format!("{volume_type} volumes are {min} to {max} GiB"),
                ));
            }
        }
        let iops = num("iops")?;
        if let Some(n) = iops {
            let Some((min, max)) = iops_range(&volume_type) else {
                return Err(invalid(
                    "iops",
                    &n.to_string(),
                    format!("only io1, io2 and gp3 take iops, not {volume_type}"),
                ));
            };
            if !(min..=max).contains(&n) {
                return Err(invalid("iops", &n.to_string(), format!("{volume_type} takes {min} to {max} iops")));
            }
        }
        let throughput = num("throughput")?;
        if let Some(t) = throughput {
            if volume_type != "gp3" {
                return Err(invalid(
                    "throughput",
                    &t.to_string(),
                    format!("only gp3 takes throughput, not {volume_type}"),
                ));
            }
            if !(125..=2_000).contains(&t) {
                return Err(invalid("throughput", &t.to_string(), "gp3 takes 125 to 2000 MiB/s"));
            }
        }
        check_ratios(&volume_type, size_gib, iops, throughput)?;
        let tags = match opts.get("tags") {
            Some(v) => parse_tags(v).map_err(|reason| invalid("tags", v, reason))?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            size_gib,
            volume_type,
            iops,
            throughput,
            encrypted: opts.get("encrypted").is_some_and(|v| v == "true") || opts.contains_key("kmsKeyID"),
            kms_key_id: opts.get("kmsKeyID").cloned(),
            availability_zone: opts.get("availabilityZone").cloned().or_else(|| defaults.availability_zone.clone()),
            snapshot_id: opts.get("snapshotID").cloned(),
            tags,
        })
    }
}

/// EBS's limits that tie IOPS to the size and throughput to the IOPS: io1 at most 50 IOPS per
/// GiB, io2 1,000; gp3 above its free 3,000 IOPS at most 500 per GiB, and above its free
/// 125 MiB/s at most 0.25 MiB/s per IOPS. Without a known size only the second is checked.
fn check_ratios(
    volume_type: &str,
    size_gib: Option<u64>,
    iops: Option<u64>,
    throughput: Option<u64>,
) -> Result<(), BackendError> {
    let per_gib = match volume_type {
        "io1" => Some(50),
        "io2" => Some(1_000),
        "gp3" => Some(500),
        _ => None,
    };
    if let (Some(per_gib), Some(size), Some(n)) = (per_gib, size_gib, iops) {
        let free = if volume_type == "gp3" { 3_000 } else { 0 };
        if n > free && n > per_gib * size {
            return Err(invalid(
                "iops",
                &n.to_string(),
                format!(
                    "a {size} GiB {volume_type} volume takes at most {} iops ({per_gib} per GiB); grow it to {} GiB first",
                    (per_gib * size).max(free),
                    n.div_ceil(per_gib)
                ),
            ));
        }
    }
    if let Some(t) = throughput.filter(|t| volume_type == "gp3" && *t > 125) {
        let iops = iops.unwrap_or(3_000);
        if t * 4 > iops {
            return Err(invalid(
                "throughput",
                &t.to_string(),
                format!(
                    "gp3 at {iops} iops takes at most {} MiB/s (0.25 MiB/s per iops); give --iops {} or more",
                    iops / 4,
                    t * 4
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `az` has the shape of an availability zone name (`us-east-1a`).
pub fn is_zone(az: &str) -> bool {
    az.len() >= 4
        && az.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && az.bytes().last().is_some_and(|b| b.is_ascii_lowercase())
}

/// Whether `id` has the shape of an EBS snapshot ID (`snap-` and letters or digits).
pub fn is_snapshot_id(id: &str) -> bool {
    id.strip_prefix("snap-").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::block::{options::parse, BlockDefaults};

    fn defaults() -> (BlockDefaults, EbsDefaults) {
        (BlockDefaults { size_gib: 16, fs_type: "ext4".into() }, EbsDefaults::default())
    }

    fn go(pairs: &[(&str, &str)]) -> Result<Options, BackendError> {
        go_with(pairs, &defaults().1)
    }

    fn go_with(pairs: &[(&str, &str)], ebs: &EbsDefaults) -> Result<Options, BackendError> {
        let raw: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let size_given = raw.keys().any(|k| k.eq_ignore_ascii_case("size"));
        let opts = parse(&raw, EBS_SPECS, &defaults().0)?;
        complete(opts, size_given, ebs)
    }

    #[test]
    fn defaults_are_16_gib_gp3_ext4() {
        let o = go(&[]).unwrap();
        assert_eq!(o["size"], "16");
        assert_eq!(o["volumeType"], "gp3");
        assert_eq!(o["fsType"], "ext4");
        let e = EbsOptions::from_options(&o, &EbsDefaults::default()).unwrap();
        assert_eq!((e.size_gib, e.encrypted, e.iops), (Some(16), false, None));
    }

    #[test]
    fn aliases_and_case_fold() {
        let o = go(&[
            ("Size", "20"),
            ("TYPE", "IO2"),
            ("IOPS", "4000"),
            ("encryptionKey", "alias/mine"),
            ("AZ", "us-east-1b"),
            ("Tags", "team=db; cost=42"),
            ("fstype", "xfs"),
        ])
        .unwrap();
        assert_eq!(o["volumeType"], "io2");
        assert_eq!(o["iops"], "4000");
        assert_eq!(o["kmsKeyID"], "alias/mine");
        assert_eq!(o["encrypted"], "true");
        assert_eq!(o["availabilityZone"], "us-east-1b");
        assert_eq!(o["tags"], "cost=42;team=db");
        assert_eq!(o["fsType"], "xfs");
    }

    #[test]
    fn config_defaults_apply() {
        let ebs = EbsDefaults {
            volume_type: Some("io1".into()),
            iops: Some(500),
            availability_zone: Some("eu-west-1c".into()),
        };
        let o = go_with(&[], &ebs).unwrap();
        assert_eq!(o["volumeType"], "io1");
        assert_eq!(o["iops"], "500");
        let e = EbsOptions::from_options(&o, &ebs).unwrap();
        assert_eq!(e.availability_zone.as_deref(), Some("eu-west-1c"));
    }

    #[test]
    fn a_snapshot_without_size_takes_the_snapshot_size() {
        let o = go(&[("snapshotID", "snap-0abc")]).unwrap();
        assert!(!o.contains_key("size"));
        assert_eq!(EbsOptions::from_options(&o, &EbsDefaults::default()).unwrap().size_gib, None);
        let o = go(&[("snapshotId", "snap-0abc"), ("size", "40")]).unwrap();
        assert_eq!(o["size"], "40");
    }

    #[test]
    fn invalid_combinations_name_the_key() {
        for (pairs, key, needle) in [
            (&[("type", "gp2"), ("iops", "3000")][..], "iops", "only io1, io2 and gp3"),
            (&[("type", "io1")][..], "iops", "needs iops"),
            (&[("type", "gp3"), ("iops", "10")][..], "iops", "3000 to 80000"),
            (&[("type", "gp2"), ("throughput", "200")][..], "throughput", "only gp3"),
            (&[("throughput", "5000")][..], "throughput", "125 to 2000"),
            (&[("type", "st1"), ("size", "10")][..], "size", "125 to 16384"),
            (&[("size", "20000")][..], "size", "1 to 16384"),
            (&[("type", "gp9")][..], "type", "expected one of"),
            (&[("encrypted", "false"), ("kmsKeyID", "k")][..], "encrypted", "must be encrypted"),
            (&[("availabilityZone", "Mars")][..], "availabilityZone", "availability zone"),
            (&[("snapshotID", "vol-1")][..], "snapshotID", "snapshot ID"),
            (&[("tags", "novalue")][..], "tags", "not key=value"),
            (&[("tags", "Name=x")][..], "tags", "set by rexray"),
            (&[("tags", "aws:x=1")][..], "tags", "reserved"),
            (&[("tags", "rexray-rs/managed=no")][..], "tags", "set by rexray"),
            (&[("bogus", "1")][..], "bogus", "volumeType"),
        ] {
            let err = go(pairs).unwrap_err();
            let msg = err.to_string();
            let got = match &err {
                BackendError::InvalidOption { key, .. } | BackendError::UnknownOption { key, .. } => key.clone(),
                other => panic!("{other}"),
            };
            assert_eq!(got, key, "{pairs:?}: {msg}");
            assert!(msg.contains(needle), "{pairs:?}: {msg}");
        }
    }
}
