//! Orphans: volumes of this service that nothing uses, so an operator can find and remove them
//! (`rexray volume ls --orphans`, `rexray volume prune`). A volume is one when no container (or
//! dvdcli, or the CLI) holds it here, no operation is under way on it, the storage has it
//! published to no host, and it has not been used for a while: a named volume for the caller's
//! `named_after`, an anonymous one (Docker's 64 hex digits, made by `docker run -v /path`) for
//! `anonymous_after`. When it was last used is the latest of: this host's record (the first
//! mount and the last unmount), what the storage records (EBS: a tag every daemon sets when it
//! detaches the volume), and when it was created.

use std::time::{Duration, SystemTime};

use super::{ServiceError, VolumeService};

/// A volume nothing uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The name.
    pub name: String,
    /// Docker's anonymous volume (64 hex digits).
    pub anonymous: bool,
    /// When it was last used (or created), RFC 3339; empty when not known.
    pub last_used: String,
    /// How long ago that was.
    pub idle: Duration,
}

/// Whether `name` is one of Docker's anonymous volume names.
pub fn is_anonymous(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

impl VolumeService {
    /// The volumes of this service nothing uses (see the module documentation), by name.
    ///
    /// # Errors
    /// The storage could not be listed and never was.
    pub async fn orphans(&self, named_after: Duration, anonymous_after: Duration) -> Result<Vec<Orphan>, ServiceError> {
        let listing = self.list().await?;
        let now = SystemTime::now();
        let mut out = Vec::new();
        for entry in listing.volumes {
            let Ok(name) = crate::name::VolumeName::new(&entry.name) else { continue };
            let record = self.shared(&entry.name);
            if let Some(r) = &record {
                if r.holder_count() > 0 || r.active || r.pending.is_some() {
                    continue;
                }
            }
            let usage = self.backend.controller.usage(&name);
            if !usage.published_to.is_empty() {
                continue;
            }
            let times = [
                record.as_ref().and_then(|r| r.last_used.clone()),
                record.as_ref().map(|r| r.created_at.clone()),
                usage.last_used,
            ];
            let last = times.into_iter().flatten().filter_map(|t| parse_time(&t).map(|at| (at, t))).max();
            let idle = last.as_ref().map_or(Duration::MAX, |(at, _)| now.duration_since(*at).unwrap_or_default());
            let anonymous = is_anonymous(&entry.name);
            if idle >= if anonymous { anonymous_after } else { named_after } {
                out.push(Orphan {
                    name: entry.name,
                    anonymous,
                    last_used: last.map(|(_, t)| t).unwrap_or_default(),
                    idle,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::is_anonymous;

    #[test]
    fn anonymous_names_are_docker_s_64_hex_digits() {
        assert!(is_anonymous(&"0123456789abcdef".repeat(4)));
        assert!(!is_anonymous(&"0123456789ABCDEF".repeat(4)));
        assert!(!is_anonymous(&"0123456789abcdef".repeat(3)));
        assert!(!is_anonymous("data1"));
    }
}
