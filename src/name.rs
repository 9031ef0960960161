//! Validated volume names, and bounded excerpts of untrusted text for messages.
//!
//! A leaf module: every layer uses [`VolumeName`], so it depends on nothing in the crate.

use std::fmt;

/// The longest name accepted, in bytes (the limit of one path component on Linux).
pub const MAX_NAME_BYTES: usize = 255;

/// The most bytes of an untrusted string (a refused name, a mount ID) that a message quotes.
pub const EXCERPT_BYTES: usize = 100;

/// A volume name that is safe to use as one path component.
///
/// Docker does not validate names for plugin drivers, so every name is checked here once:
/// not empty, not `.` or `..`, no `/`, no NUL or other control characters, at most
/// [`MAX_NAME_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(String);

/// Why a volume name was refused. The name is quoted at most [`EXCERPT_BYTES`] long.
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
            return Err(NameError::Slash(excerpt(name)));
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::Control(excerpt(&name.escape_debug().to_string())));
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

/// At most [`EXCERPT_BYTES`] of `text` (cut at a character boundary), followed by `…` and the
/// whole length when it was cut: what a message or log line may quote of untrusted input.
pub fn excerpt(text: &str) -> String {
    if text.len() <= EXCERPT_BYTES {
        return text.to_owned();
    }
    let mut end = EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
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
    fn excerpts_are_bounded_and_cut_at_a_character() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(1000);
        let cut = excerpt(&long);
        assert!(cut.len() < EXCERPT_BYTES + 20, "{cut}");
        assert!(cut.ends_with("… (2000 bytes)"), "{cut}");
        let err = VolumeName::new(&format!("{}/x", "a".repeat(200))).unwrap_err().to_string();
        assert!(err.len() < 150 && err.contains("(202 bytes)"), "{err}");
    }
}
