//! Reading ext4 and XFS superblocks: the fast path of `probe` (an unambiguous ext4 or XFS
//! superblock is recognised without running `blkid`) and the file-system size `needs_grow`
//! compares with the device's.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::os::FsType;

/// Where the primary superblock of `fs` is: (offset, length to read).
pub(super) fn superblock_location(fs: FsType) -> (u64, usize) {
    match fs {
        FsType::Ext4 => (1024, 1024),
        FsType::Xfs => (0, 512),
    }
}

/// The size of the file system in bytes, from its primary superblock (as read from
/// [`superblock_location`]); `None` when the magic number does not match.
///
/// ext4: magic `0xEF53` at 0x38 (LE); blocks = `s_blocks_count_lo` (0x04) plus
/// `s_blocks_count_hi` (0x150) when the `64bit` incompat feature (0x80 in 0x60) is set; block
/// size = 1024 << `s_log_block_size` (0x18). XFS: magic `XFSB` at 0; `sb_blocksize` (BE u32 at
/// 4) × `sb_dblocks` (BE u64 at 8).
pub fn fs_bytes_from_superblock(fs: FsType, sb: &[u8]) -> Option<u64> {
    let le32 = |at: usize| sb.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match fs {
        FsType::Ext4 => {
            let magic = sb.get(0x38..0x3A).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
            if magic != 0xEF53 {
                return None;
            }
            let log_block = le32(0x18)?;
            if log_block > 6 {
                return None;
            }
            let block_size = 1024u64 << log_block;
            let mut blocks = u64::from(le32(0x04)?);
            if le32(0x60)? & 0x80 != 0 {
                blocks |= u64::from(le32(0x150)?) << 32;
            }
            blocks.checked_mul(block_size)
        }
        FsType::Xfs => {
            if sb.get(0..4)? != b"XFSB" {
                return None;
            }
            let block_size = u32::from_be_bytes(sb.get(4..8)?.try_into().ok()?);
            let blocks = u64::from_be_bytes(sb.get(8..16)?.try_into().ok()?);
            blocks.checked_mul(u64::from(block_size))
        }
    }
}

/// How many bytes at the start of a device [`quick_probe`] looks at: the ext4 superblock
/// (1024..2048) and an XFS superblock sector of up to 4096 bytes.
pub const QUICK_PROBE_BYTES: usize = 4096;

/// CRC-32C (Castagnoli, reflected polynomial `0x82F63B78`), one entry per byte value.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::cast_possible_truncation)] // i < 256
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of `data` continuing from `crc`, with no inversion at either end (the kernel's and
/// libblkid's `crc32c(seed, …)`; the usual CRC-32C is `!crc32c(!0, data)`).
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        let index = usize::from(crc.to_le_bytes()[0] ^ byte);
        crc = CRC32C_TABLE[index] ^ (crc >> 8);
    }
    crc
}

/// The file system the first [`QUICK_PROBE_BYTES`] of a device (`head`) show beyond doubt:
/// ext4 or XFS exactly as `blkid -p` would name it. `None` means "ask blkid": a blank device,
/// ext2/ext3/jbd, a partition table or boot sector in front of an ext4 superblock, both
/// superblocks at once, a checksum that does not match, or a `head` too short.
///
/// - **ext4**: magic `0xEF53` at 1080 (LE), nothing but zeros in the 1024 bytes before it (no
///   partition table, boot sector or other label), not an external journal, and a feature
///   ext3 lacks (libblkid's own test); with `metadata_csum`, a matching superblock checksum.
/// - **XFS**: `XFSB` at 0, the geometry checks libblkid makes, no DOS boot signature at 510,
///   and for a v5 file system a matching superblock CRC.
///
/// It never answers "blank", so it can never lead to a format; a device it cannot place costs
/// only the blkid run it would have had anyway.
pub fn quick_probe(head: &[u8]) -> Option<FsType> {
    let ext4 = ext4_superblock_magic(head);
    let xfs = head.get(0..4) == Some(b"XFSB");
    match (ext4, xfs) {
        (true, false) if is_plain_ext4(head) => Some(FsType::Ext4),
        (false, true) if is_plain_xfs(head) => Some(FsType::Xfs),
        _ => None,
    }
}

fn ext4_superblock_magic(head: &[u8]) -> bool {
    head.get(1080..1082) == Some(&0xEF53u16.to_le_bytes()[..])
}

/// See [`quick_probe`]: the ext4 rules, for a `head` with the ext4 magic.
fn is_plain_ext4(head: &[u8]) -> bool {
    /// `EXT3_FEATURE_INCOMPAT_JOURNAL_DEV`: an external journal (blkid: `jbd`).
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    /// The incompat features ext3 knows: `filetype`, `needs_recovery`, `meta_bg`.
    const INCOMPAT_EXT3: u32 = 0x2 | 0x4 | 0x10;
    /// The ro-compat features ext3 knows: `sparse_super`, `large_file`, `btree_dir`.
    const RO_COMPAT_EXT3: u32 = 0x1 | 0x2 | 0x4;
    /// `EXT4_FEATURE_RO_COMPAT_METADATA_CSUM`.
    const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
    /// `EXT2_FLAGS_TEST_FILESYS` in `s_flags` (blkid: `ext4dev`).
    const FLAGS_TEST_FILESYS: u32 = 0x4;
    /// Where `s_checksum` is; the checksum covers everything before it.
    const CHECKSUM_AT: usize = 0x3FC;

    let (Some(front), Some(sb)) = (head.get(..1024), head.get(1024..2048)) else { return false };
    if front.iter().any(|&b| b != 0) {
        return false;
    }
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    let (incompat, ro_compat, flags) = (le32(0x60), le32(0x64), le32(0x160));
    if incompat & INCOMPAT_JOURNAL_DEV != 0 || flags & FLAGS_TEST_FILESYS != 0 {
        return false;
    }
    if incompat & !INCOMPAT_EXT3 == 0 && ro_compat & !RO_COMPAT_EXT3 == 0 {
        return false; // ext2 or ext3
    }
    if ro_compat & RO_COMPAT_METADATA_CSUM != 0 && crc32c(!0, &sb[..CHECKSUM_AT]) != le32(CHECKSUM_AT) {
        return false;
    }
    fs_bytes_from_superblock(FsType::Ext4, sb).is_some()
}

/// See [`quick_probe`]: the XFS rules, for a `head` starting with `XFSB`.
fn is_plain_xfs(head: &[u8]) -> bool {
    /// Where `sb_crc` is (LE, unlike the rest of the superblock).
    const CRC_AT: usize = 224;
    if head.len() < 512 || head[510..512] == [0x55, 0xAA] {
        return false;
    }
    let be16 = |at: usize| u16::from_be_bytes([head[at], head[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    let log_matches = |size: u64, log: u8| size.is_power_of_two() && size.trailing_zeros() == u32::from(log);
    let (block_size, dblocks, agcount) = (u64::from(be32(4)), be64(8), be32(88));
    let (version, sect_size, inode_size) = (be16(100), u64::from(be16(102)), u64::from(be16(104)));
    let (block_log, sect_log, inode_log, inop_log, imax_pct) = (head[120], head[121], head[122], head[123], head[127]);
    let sane = agcount > 0
        && dblocks > 0
        && (512..=32768).contains(&sect_size)
        && log_matches(sect_size, sect_log)
        && (512..=65536).contains(&block_size)
        && log_matches(block_size, block_log)
        && (256..=2048).contains(&inode_size)
        && log_matches(inode_size, inode_log)
        && block_log.checked_sub(inode_log) == Some(inop_log)
        && imax_pct <= 100;
    if !sane {
        return false;
    }
    if version & 0xF == 5 {
        let Ok(sect_size) = usize::try_from(sect_size) else { return false };
        let Some(sector) = head.get(..sect_size) else { return false };
        let crc = crc32c(!0, &sector[..CRC_AT]);
        let crc = crc32c(crc, &[0; 4]);
        let crc = !crc32c(crc, &sector[CRC_AT + 4..]);
        let stored = u32::from_le_bytes([sector[CRC_AT], sector[CRC_AT + 1], sector[CRC_AT + 2], sector[CRC_AT + 3]]);
        if crc != stored {
            return false;
        }
    }
    true
}

/// Reads up to [`QUICK_PROBE_BYTES`] from the start of `file` (less if it is shorter).
pub(super) fn read_head(file: &File) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; QUICK_PROBE_BYTES];
    let mut filled = 0;
    while filled < head.len() {
        match file.read_at(&mut head[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok(head)
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    #[test]
    fn superblock_sizes() {
        let mut ext4 = vec![0u8; 1024];
        ext4[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        ext4[0x04..0x08].copy_from_slice(&262_144u32.to_le_bytes());
        ext4[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes()); // 4096-byte blocks
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &ext4), Some(1 << 30));
        ext4[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &ext4), Some(1 << 30), "hi word needs 64bit");
        ext4[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &ext4), Some((1 << 30) + (4096 << 32)));
        assert_eq!(fs_bytes_from_superblock(FsType::Xfs, &ext4), None);

        let mut xfs = vec![0u8; 512];
        xfs[0..4].copy_from_slice(b"XFSB");
        xfs[4..8].copy_from_slice(&4096u32.to_be_bytes());
        xfs[8..16].copy_from_slice(&524_288u64.to_be_bytes());
        assert_eq!(fs_bytes_from_superblock(FsType::Xfs, &xfs), Some(2 << 30));
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &xfs), None);
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &[0u8; 10]), None);
    }

    /// An ext4 superblock (at 1024 in a 4 KiB head) with the given features, no checksum.
    fn ext4_head(incompat: u32, ro_compat: u32) -> Vec<u8> {
        let mut head = vec![0u8; QUICK_PROBE_BYTES];
        let sb = &mut head[1024..2048];
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&262_144u32.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&ro_compat.to_le_bytes());
        head
    }

    /// Sets the ext4 `metadata_csum` feature and a correct checksum.
    fn with_ext4_csum(mut head: Vec<u8>) -> Vec<u8> {
        let sb = &mut head[1024..2048];
        let ro = u32::from_le_bytes(sb[0x64..0x68].try_into().unwrap()) | 0x400;
        sb[0x64..0x68].copy_from_slice(&ro.to_le_bytes());
        let csum = crc32c(!0, &sb[..0x3FC]);
        sb[0x3FC..0x400].copy_from_slice(&csum.to_le_bytes());
        head
    }

    /// A v4 XFS superblock (4 KiB blocks, 512-byte sectors, 512-byte inodes): no CRC.
    fn xfs_head() -> Vec<u8> {
        let mut head = vec![0u8; QUICK_PROBE_BYTES];
        head[0..4].copy_from_slice(b"XFSB");
        head[4..8].copy_from_slice(&4096u32.to_be_bytes());
        head[8..16].copy_from_slice(&262_144u64.to_be_bytes());
        head[88..92].copy_from_slice(&4u32.to_be_bytes());
        head[100..102].copy_from_slice(&0xB4A4u16.to_be_bytes());
        head[102..104].copy_from_slice(&512u16.to_be_bytes());
        head[104..106].copy_from_slice(&512u16.to_be_bytes());
        head[106..108].copy_from_slice(&8u16.to_be_bytes());
        head[120..124].copy_from_slice(&[12, 9, 9, 3]);
        head[127] = 25;
        head
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(crc32c(!0, b"1234"), b"56789"), crc32c(!0, b"123456789"));
    }

    #[test]
    fn quick_probe_recognises_only_unambiguous_ext4() {
        // extents + 64bit + flex_bg: ext4.
        let ext4 = ext4_head(0x2C2, 0x1);
        assert_eq!(quick_probe(&ext4), Some(FsType::Ext4));
        // A ro-compat feature ext3 lacks (huge_file) is enough, as for blkid.
        assert_eq!(quick_probe(&ext4_head(0x2, 0x8)), Some(FsType::Ext4));
        // ext3/ext2 (filetype, sparse_super, large_file only) and an external journal: blkid.
        assert_eq!(quick_probe(&ext4_head(0x2, 0x3)), None);
        assert_eq!(quick_probe(&ext4_head(0x2C2 | 0x8, 0x1)), None);
        // ext4dev (test_fs flag).
        let mut dev = ext4.clone();
        dev[1024 + 0x160] = 0x4;
        assert_eq!(quick_probe(&dev), None);
        // Anything in front of the superblock (a DOS table, a boot sector): blkid.
        let mut mbr = ext4.clone();
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(quick_probe(&mbr), None);
        // A nonsensical block size.
        let mut odd = ext4.clone();
        odd[1024 + 0x18] = 9;
        assert_eq!(quick_probe(&odd), None);
        // Truncated.
        assert_eq!(quick_probe(&ext4[..1500]), None);
    }

    #[test]
    fn quick_probe_checks_the_ext4_checksum() {
        let good = with_ext4_csum(ext4_head(0x2C2, 0x1));
        assert_eq!(quick_probe(&good), Some(FsType::Ext4));
        let mut bad = good.clone();
        bad[1024 + 0x78] ^= 1; // the volume label
        assert_eq!(quick_probe(&bad), None);
    }

    #[test]
    fn quick_probe_recognises_only_sane_xfs() {
        let xfs = xfs_head();
        assert_eq!(quick_probe(&xfs), Some(FsType::Xfs));
        for (at, value) in [(121usize, 10u8), (120, 13), (88, 0), (127, 101)] {
            let mut bad = xfs.clone();
            if at == 88 {
                bad[88..92].copy_from_slice(&0u32.to_be_bytes());
            } else {
                bad[at] = value;
            }
            assert_eq!(quick_probe(&bad), None, "byte {at} = {value}");
        }
        let mut boot = xfs.clone();
        boot[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(quick_probe(&boot), None);
        // v5 without a valid CRC.
        let mut v5 = xfs.clone();
        v5[100..102].copy_from_slice(&0xB4A5u16.to_be_bytes());
        assert_eq!(quick_probe(&v5), None);
        // Both superblocks at once: ambiguous.
        let mut both = xfs.clone();
        both[1080..1082].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert_eq!(quick_probe(&both), None);
        // Blank and short devices.
        assert_eq!(quick_probe(&[0u8; QUICK_PROBE_BYTES]), None);
        assert_eq!(quick_probe(&[]), None);
        assert_eq!(quick_probe(b"XFSB"), None);
    }

    /// Whether `tool` is installed (a test that needs it passes without it, saying why).
    fn has_tool(tool: &str) -> bool {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
        if !found {
            eprintln!("skipping the {tool} part: not installed");
        }
        found
    }

    /// Makes a sparse image of `size` bytes and runs `tool args… image` on it.
    fn image_made_by(dir: &Path, name: &str, size: u64, tool: &str, args: &[&str]) -> PathBuf {
        let image = dir.join(name);
        File::create(&image).unwrap().set_len(size).unwrap();
        let out = Command::new(tool).args(args).arg(&image).output().unwrap();
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        image
    }

    fn quick_probe_file(image: &Path) -> Option<FsType> {
        quick_probe(&read_head(&File::open(image).unwrap()).unwrap())
    }

    #[test]
    fn quick_probe_of_images_made_by_the_real_tools() {
        let tmp = tempfile::tempdir().unwrap();
        let blank = tmp.path().join("blank.img");
        File::create(&blank).unwrap().set_len(64 << 20).unwrap();
        assert_eq!(quick_probe_file(&blank), None);
        let tiny = tmp.path().join("tiny.img");
        fs::write(&tiny, b"XFSB").unwrap();
        assert_eq!(read_head(&File::open(&tiny).unwrap()).unwrap(), b"XFSB");
        assert_eq!(quick_probe_file(&tiny), None);

        if has_tool("mkfs.ext4") {
            let ext4 = image_made_by(tmp.path(), "ext4.img", 64 << 20, "mkfs.ext4", &["-q", "-F"]);
            assert_eq!(quick_probe_file(&ext4), Some(FsType::Ext4));
            // The same with the options the daemon formats with.
            let lazy = image_made_by(
                tmp.path(),
                "lazy.img",
                64 << 20,
                "mkfs.ext4",
                &["-q", "-F", "-m0", "-E", "lazy_itable_init=1,lazy_journal_init=1"],
            );
            assert_eq!(quick_probe_file(&lazy), Some(FsType::Ext4));
            // A damaged superblock is left to blkid.
            let f = OpenOptions::new().write(true).open(&ext4).unwrap();
            f.write_all_at(b"x", 1024 + 0x78).unwrap();
            assert_eq!(quick_probe_file(&ext4), None);
        }
        if has_tool("mkfs.ext3") {
            let ext3 = image_made_by(tmp.path(), "ext3.img", 64 << 20, "mkfs.ext3", &["-q", "-F"]);
            assert_eq!(quick_probe_file(&ext3), None, "ext3 is for blkid to name");
        }
        if has_tool("mkfs.ext2") {
            let ext2 = image_made_by(tmp.path(), "ext2.img", 64 << 20, "mkfs.ext2", &["-q", "-F"]);
            assert_eq!(quick_probe_file(&ext2), None, "ext2 is for blkid to name");
        }
        if has_tool("mkfs.xfs") {
            let xfs = image_made_by(tmp.path(), "xfs.img", 512 << 20, "mkfs.xfs", &["-q", "-f"]);
            assert_eq!(quick_probe_file(&xfs), Some(FsType::Xfs));
            let f = OpenOptions::new().write(true).open(&xfs).unwrap();
            f.write_all_at(b"x", 108).unwrap(); // the label, covered by the v5 CRC
            assert_eq!(quick_probe_file(&xfs), None);
        }
        if has_tool("mkswap") {
            let swap = image_made_by(tmp.path(), "swap.img", 64 << 20, "mkswap", &[]);
            assert_eq!(quick_probe_file(&swap), None);
        }
    }
}
