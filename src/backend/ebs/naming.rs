//! Names and tags: how a Docker volume name maps to an EC2 `Name` tag, ownership, the tags that
//! carry a volume's fixed options, and client tokens.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::options::EbsOptions;
use super::settings::EbsSettings;
use crate::backend::Options;
use crate::name::VolumeName;

/// The ownership tag every volume created here carries.
pub const OWNER_TAG: &str = "rexray-rs/managed";

/// The tag a daemon sets, to the time (RFC 3339), when it detaches the volume: when a host last
/// used it, for finding orphans.
pub const LAST_USED_TAG: &str = "rexray-rs/lastUsed";
/// Its value.
pub const OWNER_VALUE: &str = "true";

/// Block options kept as tags, so every host formats and mounts the volume alike:
/// (tag key, option key).
pub const BLOCK_TAGS: &[(&str, &str)] = &[
    ("rexray-rs/fsType", "fsType"),
    ("rexray-rs/uid", "uid"),
    ("rexray-rs/gid", "gid"),
    ("rexray-rs/mode", "mode"),
    ("rexray-rs/mkfsOptions", "mkfsOptions"),
    ("rexray-rs/mountOptions", "mountOptions"),
];

/// Escapes `*`, `?` and `\` for an EC2 filter value.
pub fn filter_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A hex sha256: the client token for a Name tag (64 characters, EC2's limit).
pub fn client_token(base: &str) -> String {
    Sha256::digest(base.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The device an EBS volume's NVMe link is named after: `vol-0abc` → `…vol0abc`.
pub fn nvme_link_name(volume_id: &str) -> String {
    format!("nvme-Amazon_Elastic_Block_Store_{}", volume_id.replace('-', ""))
}

/// The `ebs.tag` namespace of a service's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// `ebs.tag`, if set.
    tag: Option<String>,
}

impl Naming {
    /// The namespace the settings give.
    pub fn new(settings: &EbsSettings) -> Self {
        Self { tag: settings.tag.clone() }
    }

    /// The namespace prefix, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The Name tag of `name` (a volume's or a snapshot's): under the `ebs.tag` namespace if set.
    pub fn name_tag(&self, name: impl std::fmt::Display) -> String {
        match &self.tag {
            Some(tag) => format!("{tag}/{name}"),
            None => name.to_string(),
        }
    }

    /// The name a Name tag stands for, if it is in our namespace (the inverse of
    /// [`Self::name_tag`]).
    pub fn untagged<'a>(&self, tag_value: &'a str) -> Option<&'a str> {
        match &self.tag {
            Some(tag) => tag_value.strip_prefix(tag.as_str())?.strip_prefix('/'),
            None => Some(tag_value),
        }
    }

    /// The Docker name a Name tag stands for, if it is in our namespace.
    pub fn docker_name(&self, tag_value: &str) -> Option<VolumeName> {
        VolumeName::new(self.untagged(tag_value)?).ok()
    }

    /// The tags a new volume gets: its own, its Name, ownership, and its fixed block options.
    pub fn create_tags(&self, name: &VolumeName, opts: &Options, ebs: &EbsOptions) -> BTreeMap<String, String> {
        let mut tags = ebs.tags.clone();
        tags.insert("Name".into(), self.name_tag(name));
        tags.insert(OWNER_TAG.into(), OWNER_VALUE.into());
        for (tag, key) in BLOCK_TAGS {
            if let Some(v) = opts.get(*key) {
                tags.insert((*tag).into(), v.clone());
            }
        }
        tags
    }
}

/// The block options a volume's tags fix, as option key → value.
pub fn tag_options(tags: &BTreeMap<String, String>) -> Options {
    BLOCK_TAGS
        .iter()
        .filter_map(|(tag, key)| tags.get(*tag).filter(|v| !v.is_empty()).map(|v| ((*key).to_owned(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_round_trip_and_filters_are_escaped() {
        let plain = Naming { tag: None };
        let prod = Naming { tag: Some("prod".into()) };
        assert_eq!(plain.name_tag("db"), "db");
        assert_eq!(prod.name_tag("db"), "prod/db");
        assert_eq!(prod.untagged("prod/db"), Some("db"));
        assert_eq!(prod.untagged("dev/db"), None);
        assert_eq!(prod.untagged("prod"), None);
        assert_eq!(filter_literal("a*b?c\\"), "a\\*b\\?c\\\\");
        assert_eq!(client_token("v").len(), 64);
        assert_eq!(nvme_link_name("vol-0abc"), "nvme-Amazon_Elastic_Block_Store_vol0abc");
        let tags = BTreeMap::from([("rexray-rs/fsType".to_owned(), "xfs".to_owned()), ("x".into(), "y".into())]);
        assert_eq!(tag_options(&tags), Options::from([("fsType".to_owned(), "xfs".to_owned())]));
    }
}
