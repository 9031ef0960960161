//! Docker `Opts` → validated, canonical per-backend options.
//!
//! Each backend declares the options it accepts as a table of [`OptionSpec`]s. Keys are matched
//! case-insensitively and through aliases; values are checked for their kind; the result is a
//! map from canonical key to canonical value, which the service stores with the volume and the
//! backend turns into its typed options when it needs them.

use std::collections::BTreeMap;

use super::BackendError;

/// Options as stored with a volume: canonical key → canonical value.
pub type Options = BTreeMap<String, String>;

/// What kind of value an option takes.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A size in GiB: a whole number ≥ 1.
    SizeGib,
    /// A whole number ≥ 0.
    Count,
    /// true/false (also yes/no/1/0), stored as `true`/`false`.
    Bool,
    /// One of a fixed set of values, matched case-insensitively, stored lower-case.
    Choice(&'static [&'static str]),
    /// An octal file mode such as `0755`, stored as four octal digits.
    Mode,
    /// Free text (checked by the backend if it needs more).
    Text,
}

/// One accepted option.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// Canonical key, as stored and shown.
    pub key: &'static str,
    /// Other spellings accepted (compared case-insensitively).
    pub aliases: &'static [&'static str],
    /// The kind of value.
    pub kind: Kind,
}

impl OptionSpec {
    /// An option with no aliases.
    pub const fn new(key: &'static str, kind: Kind) -> Self {
        Self { key, aliases: &[], kind }
    }

    /// An option with aliases.
    pub const fn aliased(key: &'static str, aliases: &'static [&'static str], kind: Kind) -> Self {
        Self { key, aliases, kind }
    }

    fn matches(&self, key: &str) -> bool {
        self.key.eq_ignore_ascii_case(key) || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(key))
    }
}

/// Validates `raw` against `specs`, reporting every invalid option at once.
///
/// # Errors
/// [`BackendError::UnknownOption`] naming the key and listing the accepted ones, or
/// [`BackendError::InvalidOption`] naming the key, the value and what was expected; several of
/// them in one [`BackendError::InvalidOptions`].
pub fn normalize(specs: &[OptionSpec], raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
    let mut out = Options::new();
    let mut problems = Vec::new();
    for (key, value) in raw {
        let Some(spec) = specs.iter().find(|s| s.matches(key)) else {
            problems.push(BackendError::UnknownOption {
                key: key.clone(),
                accepted: specs.iter().map(|s| s.key).collect::<Vec<_>>().join(", "),
            });
            continue;
        };
        match canonical_value(spec.kind, value.trim()) {
            Err(reason) => {
                problems.push(BackendError::InvalidOption { key: key.clone(), value: value.clone(), reason });
            }
            Ok(canonical) => {
                if out.insert(spec.key.to_owned(), canonical).is_some() {
                    problems.push(BackendError::InvalidOption {
                        key: key.clone(),
                        value: value.clone(),
                        reason: format!("option {} is given more than once", spec.key),
                    });
                }
            }
        }
    }
    BackendError::all(problems).map_or(Ok(out), Err)
}

fn canonical_value(kind: Kind, value: &str) -> Result<String, String> {
    match kind {
        Kind::SizeGib => match value.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n.to_string()),
            _ => Err("expected a whole number of GiB, at least 1".into()),
        },
        Kind::Count => value.parse::<u64>().map(|n| n.to_string()).map_err(|_| "expected a whole number".into()),
        Kind::Bool => parse_bool(value).map(|b| b.to_string()).ok_or_else(|| "expected true or false".into()),
        Kind::Choice(choices) => choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(value))
            .map(|c| (*c).to_owned())
            .ok_or_else(|| format!("expected one of {}", choices.join(", "))),
        Kind::Mode => parse_mode(value)
            .map(|m| format!("{m:04o}"))
            .ok_or_else(|| "expected an octal file mode such as 0755".into()),
        Kind::Text => {
            if value.chars().any(char::is_control) {
                Err("contains a control character".into())
            } else {
                Ok(value.to_owned())
            }
        }
    }
}

/// Parses true/false, yes/no, 1/0 (any case).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// Parses an octal mode of at most 0o7777.
pub fn parse_mode(value: &str) -> Option<u32> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// Reads a canonical numeric option back (the value was validated on the way in).
pub fn get_u64(opts: &Options, key: &str) -> Option<u64> {
    opts.get(key).and_then(|v| v.parse().ok())
}

/// Reads a canonical mode option back.
pub fn get_mode(opts: &Options, key: &str) -> Option<u32> {
    opts.get(key).and_then(|v| parse_mode(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[OptionSpec] = &[
        OptionSpec::new("size", Kind::SizeGib),
        OptionSpec::aliased("fsType", &["newFsType"], Kind::Choice(&["ext4", "xfs"])),
        OptionSpec::new("mode", Kind::Mode),
        OptionSpec::new("encrypted", Kind::Bool),
    ];

    fn raw(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_are_case_insensitive_and_aliases_fold() {
        let opts = normalize(SPECS, &raw(&[("SIZE", "2"), ("newfstype", "XFS"), ("Mode", "755")])).unwrap();
        assert_eq!(opts["size"], "2");
        assert_eq!(opts["fsType"], "xfs");
        assert_eq!(opts["mode"], "0755");
    }

    #[test]
    fn unknown_key_names_it_and_lists_accepted() {
        let err = normalize(SPECS, &raw(&[("bogus", "1")])).unwrap_err().to_string();
        assert!(err.contains("\"bogus\""), "{err}");
        assert!(err.contains("size, fsType, mode, encrypted"), "{err}");
    }

    #[test]
    fn malformed_values_are_refused() {
        for (k, v) in [
            ("size", "abc"),
            ("size", "0"),
            ("size", "1.5"),
            ("fsType", "btrfs"),
            ("mode", "999"),
            ("encrypted", "maybe"),
        ] {
            let err = normalize(SPECS, &raw(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(k) && err.contains(v), "{err}");
        }
    }

    #[test]
    fn duplicate_spellings_are_refused() {
        assert!(normalize(SPECS, &raw(&[("fsType", "xfs"), ("newFsType", "ext4")])).is_err());
    }
}
