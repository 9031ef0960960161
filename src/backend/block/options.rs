//! Per-volume options shared by every block backend, and their typed form.
//!
//! | option | aliases | value | default |
//! |---|---|---|---|
//! | `size` | | whole GiB ≥ 1 | `create.default.size` (16) |
//! | `fsType` | `newFsType`, `fstype` | `ext4` or `xfs` | `create.default.fsType` (ext4) |
//! | `mkfsOptions` | | extra mkfs arguments, split on whitespace | none |
//! | `mountOptions` | | comma-separated, from [`MOUNT_OPTIONS_HELP`] | none |
//! | `uid` | | owner of the data directory | unchanged (root) |
//! | `gid` | | group of the data directory | unchanged (root) |
//! | `mode` | | octal mode of the data directory | `linux.volume.filemode` (0700) |
//!
//! [`parse`] fills in `size` and `fsType`, so a volume's stored options fix them for its whole
//! life: every later mount agrees with the first, whatever the config says by then.

use std::collections::BTreeMap;

use super::super::options::{self, Kind, OptionSpec, Options};
use super::super::BackendError;
use crate::os::{FsType, MountFlags};

/// The options every block backend accepts.
pub const BLOCK_SPECS: &[OptionSpec] = &[
    OptionSpec::new("size", Kind::SizeGib),
    OptionSpec::aliased("fsType", &["newFsType", "fstype"], Kind::Choice(&["ext4", "xfs"])),
    OptionSpec::new("mkfsOptions", Kind::Text),
    OptionSpec::new("mountOptions", Kind::Text),
    OptionSpec::new("uid", Kind::Count),
    OptionSpec::new("gid", Kind::Count),
    OptionSpec::new("mode", Kind::Mode),
];

/// The mount options accepted in `mountOptions`, for error messages and docs.
pub const MOUNT_OPTIONS_HELP: &str = "ro, rw, noatime, nodiratime, relatime, strictatime, lazytime, nodev, nosuid, \
     noexec, sync, dirsync, discard, nodiscard, nobarrier (ext4), data=ordered|writeback|journal (ext4), \
     commit=N (ext4), inode64 (xfs), logbufs=2..8 (xfs), allocsize=N[k|m|g] (xfs)";

/// Options that map to `MS_*` flags: (name, flag, whether it sets or clears the flag).
const FLAG_OPTIONS: &[(&str, MountFlags, bool)] = &[
    ("ro", MountFlags::RDONLY, true),
    ("rw", MountFlags::RDONLY, false),
    ("noatime", MountFlags::NOATIME, true),
    ("nodiratime", MountFlags::NODIRATIME, true),
    ("relatime", MountFlags::RELATIME, true),
    ("strictatime", MountFlags::STRICTATIME, true),
    ("lazytime", MountFlags::LAZYTIME, true),
    ("nodev", MountFlags::NODEV, true),
    ("nosuid", MountFlags::NOSUID, true),
    ("noexec", MountFlags::NOEXEC, true),
    ("sync", MountFlags::SYNCHRONOUS, true),
    ("dirsync", MountFlags::DIRSYNC, true),
];

/// Defaults from the service's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDefaults {
    /// `create.default.size` in GiB.
    pub size_gib: u64,
    /// `create.default.fsType`, as configured (checked when it is used).
    pub fs_type: String,
}

/// The mount options of a volume, translated for `mount(2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// `MS_*` flags.
    pub flags: MountFlags,
    /// File-system specific options for the data string, in the order given.
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self { flags: MountFlags::empty(), data: Vec::new() }
    }
}

impl MountOptions {
    /// Whether the volume is mounted read-only.
    pub fn read_only(&self) -> bool {
        self.flags.contains(MountFlags::RDONLY)
    }

    /// The data string for a file system of type `fs`: XFS always gets `nouuid` first, so a
    /// volume and its copy can be mounted on one host.
    pub fn data_for(&self, fs: FsType) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(self.data.len() + 1);
        if fs == FsType::Xfs {
            parts.push("nouuid");
        }
        parts.extend(self.data.iter().map(String::as_str));
        parts.join(",")
    }
}

/// A block volume's options, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    /// Size in GiB.
    pub size_gib: u64,
    /// File system to make on a blank device.
    pub fs_type: FsType,
    /// Extra arguments for mkfs (validated tokens).
    pub mkfs_options: Vec<String>,
    /// How to mount.
    pub mount: MountOptions,
    /// Owner of the data directory, if set.
    pub uid: Option<u32>,
    /// Group of the data directory, if set.
    pub gid: Option<u32>,
    /// Mode of the data directory, if set (else the config's file mode).
    pub mode: Option<u32>,
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidOption { key: key.to_owned(), value: value.to_owned(), reason: reason.into() }
}

/// Validates Docker's `Opts` against [`BLOCK_SPECS`] plus a backend's `extra` specs, checks the
/// block options' values, and fills in `size` and `fsType` from `defaults`.
///
/// # Errors
/// [`BackendError::UnknownOption`] or [`BackendError::InvalidOption`], naming the key.
pub fn parse(
    raw: &BTreeMap<String, String>,
    extra: &[OptionSpec],
    defaults: &BlockDefaults,
) -> Result<Options, BackendError> {
    let specs: Vec<OptionSpec> = BLOCK_SPECS.iter().chain(extra).copied().collect();
    let mut opts = options::normalize(&specs, raw)?;
    if !opts.contains_key("size") {
        if defaults.size_gib == 0 {
            return Err(invalid("size", "", "no size given and the configured default size is 0"));
        }
        opts.insert("size".into(), defaults.size_gib.to_string());
    }
    if !opts.contains_key("fsType") {
        let fs = FsType::parse(&defaults.fs_type).ok_or_else(|| {
            invalid("fsType", &defaults.fs_type, "no fsType given and the configured default is not ext4 or xfs")
        })?;
        opts.insert("fsType".into(), fs.as_str().into());
    }
    if let Some(value) = opts.get("mountOptions").cloned() {
        if value.is_empty() {
            opts.remove("mountOptions");
        } else {
            opts.insert("mountOptions".into(), canonical_mount_options(&value));
        }
    }
    if let Some(value) = opts.get("mkfsOptions").cloned() {
        if value.is_empty() {
            opts.remove("mkfsOptions");
        } else {
            opts.insert("mkfsOptions".into(), value.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    // Check every value the way activation will read it.
    BlockOptions::from_options(&opts, defaults)?;
    Ok(opts)
}

fn canonical_mount_options(value: &str) -> String {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(",")
}

impl BlockOptions {
    /// Reads stored (canonical) options back. Missing `size`/`fsType` (options stored by an
    /// older version) fall back to `defaults`.
    ///
    /// # Errors
    /// [`BackendError::InvalidOption`] for a value that does not check out.
    pub fn from_options(opts: &Options, defaults: &BlockDefaults) -> Result<Self, BackendError> {
        let size_gib = match opts.get("size") {
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid("size", v, "expected a whole number of GiB, at least 1"))?,
            None => defaults.size_gib,
        };
        let fs_value = opts.get("fsType").map_or(defaults.fs_type.as_str(), String::as_str);
        let fs_type = FsType::parse(fs_value).ok_or_else(|| invalid("fsType", fs_value, "expected ext4 or xfs"))?;
        let mkfs_options = match opts.get("mkfsOptions") {
            Some(v) => parse_mkfs_options(v, fs_type).map_err(|reason| invalid("mkfsOptions", v, reason))?,
            None => Vec::new(),
        };
        let mount = match opts.get("mountOptions") {
            Some(v) => parse_mount_options(v, fs_type).map_err(|reason| invalid("mountOptions", v, reason))?,
            None => MountOptions::default(),
        };
        Ok(Self {
            size_gib,
            fs_type,
            mkfs_options,
            mount,
            uid: id_option(opts, "uid")?,
            gid: id_option(opts, "gid")?,
            mode: match opts.get("mode") {
                Some(v) => Some(options::parse_mode(v).ok_or_else(|| invalid("mode", v, "expected an octal mode"))?),
                None => None,
            },
        })
    }

    /// The size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_gib.saturating_mul(1 << 30)
    }
}

fn id_option(opts: &Options, key: &str) -> Result<Option<u32>, BackendError> {
    match opts.get(key) {
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| invalid(key, v, "expected a numeric id below 4294967296")),
        None => Ok(None),
    }
}

/// Splits `mkfsOptions` on whitespace and checks every token.
///
/// A token is either a flag (`-` and one letter, e.g. `-L`) or a value matching
/// `^\^?[A-Za-z0-9_.,=:+-]+$` (a leading `^` negates an ext4 feature, as in `-O ^has_journal`).
/// Slashes are refused, and so are `name=`, `logdev=` and `rtdev=`, a bare `--`, and the flags
/// that read host files into the new file system (ext4 `-d DIR`, xfs `-p PROTOFILE`): they would
/// let a volume point mkfs at another device or file. A value must follow a flag, so no token
/// can be taken as the device argument. No shell is ever involved; this keeps the arguments to
/// what a volume's owner may reasonably choose.
///
/// # Errors
/// A reason naming the offending token.
pub fn parse_mkfs_options(value: &str, fs: FsType) -> Result<Vec<String>, String> {
    let host_files_flag = match fs {
        FsType::Ext4 => "-d",
        FsType::Xfs => "-p",
    };
    let mut tokens = Vec::new();
    let mut after_flag = false;
    for token in value.split_whitespace() {
        let is_flag = token.len() == 2 && token.starts_with('-') && token.as_bytes()[1].is_ascii_alphabetic();
        if token == host_files_flag {
            return Err(format!("{token:?} is not allowed for {fs}: it copies host files into the volume"));
        }
        if token == "--" {
            return Err("\"--\" is not allowed".into());
        }
        if is_flag {
            after_flag = true;
        } else {
            let body = token.strip_prefix('^').unwrap_or(token);
            let safe = !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.,=:+-".contains(&b));
            if !safe {
                return Err(format!(
                    "{token:?} is not allowed: use flags like -L and values of letters, digits and _.,=:+- only"
                ));
            }
            let lower = body.to_ascii_lowercase();
            if let Some(bad) = ["name=", "logdev=", "rtdev="].into_iter().find(|k| lower.contains(k)) {
                return Err(format!("{token:?} is not allowed: {bad} would point mkfs at another device"));
            }
            if !after_flag && !body.starts_with('-') {
                return Err(format!("{token:?} is not allowed: a value must follow a flag such as -L"));
            }
            after_flag = false;
        }
        tokens.push(token.to_owned());
    }
    Ok(tokens)
}

/// Checks a comma-separated `mountOptions` value for a file system of type `fs` and translates
/// it: flag-like options become `MS_*` flags, the rest the data string.
///
/// # Errors
/// A reason naming the offending option.
pub fn parse_mount_options(value: &str, fs: FsType) -> Result<MountOptions, String> {
    let mut out = MountOptions::default();
    for opt in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let lower = opt.to_ascii_lowercase();
        if let Some((_, flag, set)) = FLAG_OPTIONS.iter().find(|(name, _, _)| *name == lower) {
            if *set {
                out.flags.insert(*flag);
            } else {
                out.flags.remove(*flag);
            }
            continue;
        }
        let only = |wanted: FsType| -> Result<(), String> {
            if fs == wanted {
                Ok(())
            } else {
                Err(format!("mount option {opt:?} is for {wanted} only, and this volume is {fs}"))
            }
        };
        let (key, arg) = match lower.split_once('=') {
            Some((k, a)) => (k, Some(a)),
            None => (lower.as_str(), None),
        };
        match (key, arg) {
            ("discard" | "nodiscard", None) => {}
            ("nobarrier", None) => only(FsType::Ext4)?,
            ("data", Some("ordered" | "writeback" | "journal")) => only(FsType::Ext4)?,
            ("commit", Some(n)) if is_number(n) && n.parse::<u32>().is_ok() => only(FsType::Ext4)?,
            ("inode64", None) => only(FsType::Xfs)?,
            ("logbufs", Some(n)) if matches!(n.parse::<u8>(), Ok(2..=8)) => only(FsType::Xfs)?,
            ("allocsize", Some(size)) if is_size(size) => only(FsType::Xfs)?,
            _ => return Err(format!("mount option {opt:?} is not allowed (allowed: {MOUNT_OPTIONS_HELP})")),
        }
        out.data.push(lower);
    }
    Ok(out)
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_size(s: &str) -> bool {
    let digits = s.strip_suffix(['k', 'm', 'g']).unwrap_or(s);
    is_number(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> BlockDefaults {
        BlockDefaults { size_gib: 16, fs_type: "ext4".into() }
    }

    fn raw(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        parse(&raw(pairs), &[], &defaults()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_recorded() {
        let opts = parse(&raw(&[]), &[], &defaults()).unwrap();
        assert_eq!(opts["size"], "16");
        assert_eq!(opts["fsType"], "ext4");
        let xfs = BlockDefaults { size_gib: 2, fs_type: "XFS".into() };
        let opts = parse(&raw(&[("uid", "1000")]), &[], &xfs).unwrap();
        assert_eq!((opts["size"].as_str(), opts["fsType"].as_str(), opts["uid"].as_str()), ("2", "xfs", "1000"));
    }

    #[test]
    fn aliases_and_canonical_forms() {
        let opts = parse(
            &raw(&[("newFsType", "XFS"), ("mountOptions", " noatime , inode64,"), ("mkfsOptions", " -L  data ")]),
            &[],
            &defaults(),
        )
        .unwrap();
        assert_eq!(opts["fsType"], "xfs");
        assert_eq!(opts["mountOptions"], "noatime,inode64");
        assert_eq!(opts["mkfsOptions"], "-L data");
        assert_eq!(parse(&raw(&[("fstype", "ext4")]), &[], &defaults()).unwrap()["fsType"], "ext4");
    }

    #[test]
    fn typed_options() {
        let opts = parse(
            &raw(&[
                ("size", "3"),
                ("mountOptions", "ro,noatime,nosuid,discard,data=journal,commit=30"),
                ("mode", "750"),
            ]),
            &[],
            &defaults(),
        )
        .unwrap();
        let b = BlockOptions::from_options(&opts, &defaults()).unwrap();
        assert_eq!(b.size_gib, 3);
        assert_eq!(b.size_bytes(), 3 << 30);
        assert_eq!(b.fs_type, FsType::Ext4);
        assert!(b.mount.read_only());
        assert_eq!(b.mount.flags, MountFlags::RDONLY | MountFlags::NOATIME | MountFlags::NOSUID);
        assert_eq!(b.mount.data_for(FsType::Ext4), "discard,data=journal,commit=30");
        assert_eq!(b.mode, Some(0o750));
        assert_eq!(MountOptions::default().data_for(FsType::Xfs), "nouuid");
        let rw = parse_mount_options("ro,rw", FsType::Ext4).unwrap();
        assert!(!rw.read_only(), "the last of ro/rw wins");
    }

    #[test]
    fn bad_values_are_refused_naming_the_option() {
        for (pairs, needle) in [
            (vec![("fsType", "btrfs")], "fsType"),
            (vec![("size", "abc")], "size"),
            (vec![("size", "0")], "size"),
            (vec![("mountOptions", "noatime,suid")], "\"suid\" is not allowed"),
            (vec![("mountOptions", "data=bogus")], "data=bogus"),
            (vec![("mountOptions", "inode64")], "for xfs only"),
            (vec![("fsType", "xfs"), ("mountOptions", "nobarrier")], "for ext4 only"),
            (vec![("mountOptions", "commit=abc")], "commit=abc"),
            (vec![("mountOptions", "commit=99999999999")], "commit=99999999999"),
            (vec![("fsType", "xfs"), ("mountOptions", "logbufs=9")], "logbufs=9"),
            (vec![("mountOptions", "x-mount.mkdir")], "not allowed"),
            (vec![("mkfsOptions", "-L $(reboot)")], "mkfsOptions"),
            (vec![("mkfsOptions", "-L a;b")], "not allowed"),
            (vec![("mkfsOptions", "-L /etc")], "not allowed"),
            (vec![("mkfsOptions", "/dev/sda")], "not allowed"),
            (vec![("mkfsOptions", "sda")], "must follow a flag"),
            (vec![("mkfsOptions", "-L x y")], "must follow a flag"),
            (vec![("fsType", "xfs"), ("mkfsOptions", "-l logdev=sdb")], "logdev="),
            (vec![("uid", "99999999999")], "uid"),
            (vec![("mode", "999")], "mode"),
            (vec![("bogus", "1")], "bogus"),
        ] {
            let e = err(&pairs);
            assert!(e.contains(needle), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn ordinary_mkfs_options_pass() {
        assert_eq!(
            parse_mkfs_options("-L my-vol -O ^has_journal -E root_owner=1000:1000 -b 4096 -i size=512", FsType::Ext4)
                .unwrap(),
            ["-L", "my-vol", "-O", "^has_journal", "-E", "root_owner=1000:1000", "-b", "4096", "-i", "size=512"]
        );
        assert_eq!(parse_mkfs_options("-K --no-discard", FsType::Ext4).unwrap(), ["-K", "--no-discard"]);
        assert_eq!(parse_mkfs_options("-d agcount=4", FsType::Xfs).unwrap(), ["-d", "agcount=4"]);
        assert!(parse_mkfs_options("-d etc", FsType::Ext4).unwrap_err().contains("host files"));
        assert!(parse_mkfs_options("-p proto", FsType::Xfs).unwrap_err().contains("host files"));
        assert!(parse_mkfs_options("-- sda", FsType::Ext4).is_err());
    }

    #[test]
    fn bad_default_fs_type_is_reported() {
        let bad = BlockDefaults { size_gib: 1, fs_type: "ext3".into() };
        let e = parse(&raw(&[]), &[], &bad).unwrap_err().to_string();
        assert!(e.contains("ext3") && e.contains("configured"), "{e}");
        assert!(parse(&raw(&[("fsType", "xfs")]), &[], &bad).is_ok());
    }

    #[test]
    fn extra_specs_are_accepted() {
        let extra = [OptionSpec::new("iops", Kind::Count)];
        let opts = parse(&raw(&[("iops", "300")]), &extra, &defaults()).unwrap();
        assert_eq!(opts["iops"], "300");
        assert!(err(&[("iops", "300")]).contains("iops"));
    }
}
