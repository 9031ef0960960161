//! Reading the orchestrator's volume capabilities and capacity ranges: what this plugin can
//! serve, refused in words when it cannot.

use super::proto::volume_capability::access_mode::Mode;
use super::proto::volume_capability::AccessType;
use super::proto::{CapacityRange, VolumeCapability};
use crate::service::StageRequest;

/// One GiB, the unit volumes are sized in.
pub const GIB: u64 = 1 << 30;

/// A volume capability this plugin serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The file system type and mount flags asked for.
    pub mount: StageRequest,
    /// Whether the access mode only reads.
    pub read_only: bool,
}

/// The capability `cap` as this plugin serves it.
///
/// # Errors
/// A message naming what is missing or not supported: an access mode for more than one node (a volume is attached to one node at a time), or none.
pub fn access(cap: &VolumeCapability) -> Result<Access, String> {
    let mount = match &cap.access_type {
        Some(AccessType::Mount(m)) => StageRequest {
            fs_type: m.fs_type.trim().to_ascii_lowercase(),
            mount_flags: m.mount_flags.clone(),
            block: false,
        },
        Some(AccessType::Block(_)) => StageRequest { block: true, ..StageRequest::default() },
        None => return Err("the volume capability has no access type (mount or block)".into()),
    };
    let mode = cap.access_mode.as_ref().map(|m| m.mode).ok_or("the volume capability has no access mode")?;
    let read_only = match Mode::try_from(mode) {
        Ok(Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter) => false,
        Ok(Mode::SingleNodeReaderOnly) => true,
        Ok(other @ (Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter)) => {
            return Err(format!(
                "access mode {} is not supported: a volume is attached to one node at a time",
                other.as_str_name()
            ))
        }
        Ok(Mode::Unknown) | Err(_) => return Err(format!("access mode {mode} is not a known one")),
    };
    Ok(Access { mount, read_only })
}

/// Every capability in `caps`, which must not be empty.
///
/// # Errors
/// As [`access`], naming the capability's place.
pub fn all(caps: &[VolumeCapability]) -> Result<Vec<Access>, String> {
    if caps.is_empty() {
        return Err("volume_capabilities is empty".into());
    }
    caps.iter().enumerate().map(|(i, c)| access(c).map_err(|e| format!("volume capability {}: {e}", i + 1))).collect()
}

/// Whether a backend of `kind` serves every capability in `access`: vfs volumes are
/// directories, so they have no raw block form.
///
/// # Errors
/// A message saying which backend cannot serve raw block access.
pub fn served_by(access: &[Access], kind: &str) -> Result<(), String> {
    if kind == "vfs" && access.iter().any(|a| a.mount.block) {
        return Err(
            "raw block access is not served by the vfs backend: its volumes are directories; ask for a mount volume"
                .into(),
        );
    }
    Ok(())
}

/// The whole GiB a `range` asks for (`default_gib` when it asks for nothing), checked against
/// its limit.
///
/// # Errors
/// A message when the range is negative, or its limit is below its required size once rounded
/// up to a whole GiB.
pub fn size_gib(range: Option<&CapacityRange>, default_gib: u64) -> Result<u64, String> {
    let Some(range) = range else { return Ok(default_gib) };
    let (Ok(required), Ok(limit)) = (u64::try_from(range.required_bytes), u64::try_from(range.limit_bytes)) else {
        return Err("capacity_range has a negative size".into());
    };
    if limit > 0 && required > limit {
        return Err(format!("capacity_range requires {required} bytes but limits the volume to {limit}"));
    }
    let gib = if required == 0 {
        if limit > 0 {
            default_gib.min(limit / GIB).max(1)
        } else {
            default_gib
        }
    } else {
        required.div_ceil(GIB).max(1)
    };
    if limit > 0 && gib.saturating_mul(GIB) > limit {
        return Err(format!(
            "volumes are sized in whole GiB: {gib} GiB ({} bytes) would exceed the limit of {limit} bytes",
            gib.saturating_mul(GIB)
        ));
    }
    Ok(gib)
}

/// `gib` GiB in bytes, as CSI's `int64` fields carry it.
pub fn bytes(gib: u64) -> i64 {
    i64::try_from(gib.saturating_mul(GIB)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required: i64, limit: i64) -> CapacityRange {
        CapacityRange { required_bytes: required, limit_bytes: limit }
    }

    #[test]
    fn sizes_round_up_to_whole_gib_within_the_limit() {
        assert_eq!(size_gib(None, 16), Ok(16));
        assert_eq!(size_gib(Some(&range(1, 0)), 16), Ok(1));
        assert_eq!(size_gib(Some(&range(1 << 30, 0)), 16), Ok(1));
        assert_eq!(size_gib(Some(&range((1 << 30) + 1, 0)), 16), Ok(2));
        assert_eq!(size_gib(Some(&range(0, 4 << 30)), 16), Ok(4));
        assert_eq!(size_gib(Some(&range(0, 0)), 16), Ok(16));
        let err = size_gib(Some(&range((1 << 30) + 1, (1 << 30) + 10)), 16).unwrap_err();
        assert!(err.contains("whole GiB"), "{err}");
        assert!(size_gib(Some(&range(5, 4)), 16).unwrap_err().contains("limits"));
        assert!(size_gib(Some(&range(-1, 0)), 16).unwrap_err().contains("negative"));
    }
}
