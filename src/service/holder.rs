//! Who holds a mount.

use std::fmt;

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
            Holder::Id(id) => f.write_str(&crate::name::excerpt(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_missing_id_is_anonymous() {
        assert_eq!(Holder::from_request(None), Holder::Anonymous);
        assert_eq!(Holder::from_request(Some("")), Holder::Anonymous);
        assert_eq!(Holder::from_request(Some("ab")), Holder::Id("ab".into()));
    }
}
