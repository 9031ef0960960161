//! A parser for `/proc/self/mountinfo` (see `proc_pid_mountinfo(5)`).
//!
//! Each line reads
//! `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER_OPTIONS`.
//! Paths are escaped by the kernel: space, tab, newline and backslash appear as `\040`, `\011`,
//! `\012` and `\134`. Pure code: the caller reads the file.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount, as `/proc/self/mountinfo` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// What is mounted (`/dev/loop3`; unescaped), as the file system reports it.
    pub source: PathBuf,
    /// The file-system type (`ext4`, `xfs`, …).
    pub fs_type: String,
    /// The directory of the file system that forms the root of this mount (`/` unless a bind mount).
    pub root: PathBuf,
    /// Per-mount options (`rw,relatime`).
    pub options: String,
    /// The device number as `major:minor`.
    pub dev: String,
}

/// Parses the whole file. Lines that cannot be parsed are skipped (the kernel's format has not
/// changed in years; a garbled line must not hide the others).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The topmost mount at `mount_point` (the last one listed wins, as later mounts stack on top).
pub fn find_at<'a>(entries: &'a [MountEntry], mount_point: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == mount_point)
}

/// Parses one line; `None` when it does not have the documented shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let _id = fields.next()?;
    let _parent = fields.next()?;
    let dev = fields.next()?;
    let root = fields.next()?;
    let mount_point = fields.next()?;
    let options = fields.next()?;
    // Optional fields (shared:N, master:N, …) end at a lone "-".
    for field in fields.by_ref() {
        if field == "-" {
            break;
        }
    }
    let fs_type = fields.next()?;
    let source = fields.next()?;
    Some(MountEntry {
        mount_point: unescape(mount_point),
        source: unescape(source),
        fs_type: String::from_utf8(unescape(fs_type).into_os_string().into_vec()).ok()?,
        root: unescape(root),
        options: options.to_owned(),
        dev: dev.to_owned(),
    })
}

/// Undoes the kernel's octal escapes (`\040` → space). Anything else is kept as is.
pub fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && is_octal_escape(&bytes[i + 1..i + 4]) {
            let value = bytes[i + 1..i + 4].iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

fn is_octal_escape(digits: &[u8]) -> bool {
    digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 27 7:3 / /var/lib/rexray/volumes/v1 rw,relatime shared:45 master:3 - ext4 /dev/loop3 rw
91 27 7:4 / /var/lib/rexray/volumes/my\\040vol rw,noatime - xfs /dev/loop4 rw,attr2,inode64,nouuid
92 90 7:3 /data /mnt/bind rw - ext4 /dev/loop3 rw
93 27 7:5 / /var/lib/rexray/volumes/v1 rw - ext4 /dev/loop5 rw
";

    #[test]
    fn parses_fields_and_skips_optional_ones() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 6);
        let e = &entries[2];
        assert_eq!(e.mount_point, Path::new("/var/lib/rexray/volumes/v1"));
        assert_eq!(e.source, Path::new("/dev/loop3"));
        assert_eq!(e.fs_type, "ext4");
        assert_eq!(e.root, Path::new("/"));
        assert_eq!(e.options, "rw,relatime");
        assert_eq!(e.dev, "7:3");
        assert_eq!(entries[4].root, Path::new("/data"));
    }

    #[test]
    fn unescapes_octal_sequences() {
        let entries = parse(SAMPLE);
        assert_eq!(entries[3].mount_point, Path::new("/var/lib/rexray/volumes/my vol"));
        assert_eq!(unescape(r"a\011b\012c\134d"), Path::new("a\tb\nc\\d"));
        // Not an escape: kept verbatim.
        assert_eq!(unescape(r"a\9b\04"), Path::new(r"a\9b\04"));
        assert_eq!(unescape(r"tail\"), Path::new(r"tail\"));
    }

    #[test]
    fn topmost_mount_wins() {
        let entries = parse(SAMPLE);
        let top = find_at(&entries, Path::new("/var/lib/rexray/volumes/v1")).unwrap();
        assert_eq!(top.source, Path::new("/dev/loop5"));
        assert!(find_at(&entries, Path::new("/var/lib/rexray/volumes/v2")).is_none());
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse("not a mountinfo line\n\n1 2 3\n").is_empty());
    }
}
