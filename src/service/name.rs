//! Validated volume names and mount IDs.

use std::fmt;

/// The longest name accepted, in bytes (the limit of one path component on Linux).
pub const MAX_NAME_BYTES: usize = 255;

/// A volume name that is safe to use as one path component.
///
/// Docker does not validate names for plugin drivers, so every name is checked here once:
/// not empty, not `.` or `..`, no `/`, no NUL or other control characters, at most
/// [`MAX_NAME_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

/// Why a volume name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("volume name is empty")]
    Empty,
    /// The name is `.` or `..`.
    #[error("volume name {0:?} is not allowed")]
    Dots(String),
    /// The name contains `/`.
    #[error("volume name {0:?} contains '/'")]
    Slash(String),
    /// The name contains NUL or another control character.
    #[error("volume name {0:?} contains a control character")]
    Control(String),
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("volume name is {0} bytes long; the limit is {MAX_NAME_BYTES}")]
    TooLong(usize),
}

impl VolumeName {
    /// Validates `name`.
    ///
    /// # Errors
    /// A [`NameError`] saying which rule the name breaks.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name == "." || name == ".." {
            return Err(NameError::Dots(name.to_owned()));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong(name.len()));
        }
        if name.contains('/') {
            return Err(NameError::Slash(name.to_owned()));
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::Control(name.escape_debug().to_string()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds a mount: Docker's mount ID, or the anonymous holder (dvdcli and Mesos send no ID).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holder {
    /// A caller that sent no ID; held with set semantics (N mounts, one unmount).
    Anonymous,
    /// A caller-supplied ID; held with count semantics (`docker cp` mounts one ID twice).
    Id(String),
}

impl Holder {
    /// An absent or empty ID is the anonymous holder.
    pub fn from_request(id: Option<&str>) -> Self {
        match id {
            None | Some("") => Holder::Anonymous,
            Some(id) => Holder::Id(id.to_owned()),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Anonymous => f.write_str("(no ID)"),
            Holder::Id(id) => f.write_str(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["v1", "my_vol-2.x", "tenant@pool", "a b", ".hidden", "..x", "ü"] {
            assert_eq!(VolumeName::new(name).unwrap().as_str(), name);
        }
        assert!(VolumeName::new(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn refuses_unsafe_names() {
        assert_eq!(VolumeName::new(""), Err(NameError::Empty));
        assert!(matches!(VolumeName::new("."), Err(NameError::Dots(_))));
        assert!(matches!(VolumeName::new(".."), Err(NameError::Dots(_))));
        assert!(matches!(VolumeName::new("a/b"), Err(NameError::Slash(_))));
        assert!(matches!(VolumeName::new("../etc"), Err(NameError::Slash(_))));
        assert!(matches!(VolumeName::new("a\0b"), Err(NameError::Control(_))));
        assert!(matches!(VolumeName::new("a\nb"), Err(NameError::Control(_))));
        assert_eq!(VolumeName::new(&"a".repeat(256)), Err(NameError::TooLong(256)));
    }

    #[test]
    fn empty_or_missing_id_is_anonymous() {
        assert_eq!(Holder::from_request(None), Holder::Anonymous);
        assert_eq!(Holder::from_request(Some("")), Holder::Anonymous);
        assert_eq!(Holder::from_request(Some("ab")), Holder::Id("ab".into()));
    }
}
