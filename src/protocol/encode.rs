//! The Get reply written straight into its buffer.
//!
//! Get is the call Docker makes most (every `docker volume inspect`, every `docker run -v` of
//! an existing volume, and before each Mount). serde_json's generic map machinery spends
//! several instructions per byte on a reply of a few hundred bytes; this writes the same JSON
//! (the keys in the same order, strings escaped the same way) with a copy per string.

use serde_json::Value;

use crate::service::{StatusEntry, VolumeInfo};

/// The buffer a Get reply starts with (one is about 300 bytes).
const GET_CAPACITY: usize = 512;

/// `{"Volume":{"Name":…,"Mountpoint":…,"CreatedAt":…,"Status":{…}}}` for `info`; the
/// mount point and creation time only when there are any.
pub(super) fn get_reply(info: &VolumeInfo, mountpoint: Option<&str>) -> Vec<u8> {
    let mut out = Json(Vec::with_capacity(GET_CAPACITY));
    out.raw("{\"Volume\":{\"Name\":");
    out.str(&info.name);
    if let Some(mountpoint) = mountpoint {
        out.raw(",\"Mountpoint\":");
        out.str(mountpoint);
    }
    if !info.created_at.is_empty() {
        out.raw(",\"CreatedAt\":");
        out.str(&info.created_at);
    }
    out.raw(",\"Status\":{");
    let mut first = true;
    let written: Result<(), std::convert::Infallible> = info.status.try_for_each_entry(|key, value| {
        if !std::mem::take(&mut first) {
            out.raw(",");
        }
        out.str(key);
        out.raw(":");
        out.entry(value);
        Ok(())
    });
    let Ok(()) = written;
    out.raw("}}}");
    out.0
}

/// Where the first byte of `bytes` that JSON must escape is (`"`, `\\`, a control
/// character), looking at eight bytes at a time.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // A lane of `x` is zero ⇔ that lane of the result has its high bit set.
    let zero_lane = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
        // Lanes below 0x20 (the high-bit lanes are masked out: UTF-8 is never escaped).
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
        let quote = zero_lane(word ^ (ONES * u64::from(b'"')));
        let backslash = zero_lane(word ^ (ONES * u64::from(b'\\')));
        if control | quote | backslash != 0 {
            return chunk.iter().position(|&b| needs_escape(b)).map(|i| offset + i);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| needs_escape(b)).map(|i| offset + i)
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A JSON text being written.
struct Json(Vec<u8>);

impl Json {
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    /// A string, quoted and escaped as serde_json does (`\"`, `\\`, the short escapes of
    /// control characters, `\u00XX` for the others). Runs without any are copied whole.
    fn str(&mut self, s: &str) {
        let out = &mut self.0;
        out.push(b'"');
        let mut rest = s.as_bytes();
        while let Some(at) = first_to_escape(rest) {
            out.extend_from_slice(&rest[..at]);
            let b = rest[at];
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xf)],
                    ]);
                }
            }
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
        out.push(b'"');
    }

    /// A count, in decimal.
    fn u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.0.extend_from_slice(&digits[at..]);
    }

    fn entry(&mut self, entry: StatusEntry<'_>) {
        match entry {
            StatusEntry::Str(s) => self.str(s),
            StatusEntry::U64(n) => self.u64(n),
            StatusEntry::Bool(b) => self.raw(if b { "true" } else { "false" }),
            StatusEntry::Options(options) => {
                self.raw("{");
                for (i, (key, value)) in options.iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.str(key);
                    self.raw(":");
                    self.str(value);
                }
                self.raw("}");
            }
            StatusEntry::Value(value) => self.value(value),
        }
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Null => self.raw("null"),
            Value::Bool(b) => self.raw(if *b { "true" } else { "false" }),
            Value::Number(n) => self.raw(&n.to_string()),
            Value::String(s) => self.str(s),
            Value::Array(items) => {
                self.raw("[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.value(item);
                }
                self.raw("]");
            }
            Value::Object(map) => {
                self.raw("{");
                for (i, (key, item)) in map.iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.str(key);
                    self.raw(":");
                    self.value(item);
                }
                self.raw("}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_str(s: &str) -> String {
        let mut out = Json(Vec::new());
        out.str(s);
        String::from_utf8(out.0).unwrap()
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        for s in ["", "plain", "a\"b\\c", "tab\there\nnew\rline", "ünïcödé ✓", &every_control, "\u{7f}\u{2028}"] {
            assert_eq!(json_str(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
        // Each special byte at every position of runs longer than the eight-byte scan.
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', 'é', ' ', '~'] {
            for len in [1, 7, 8, 9, 16, 17, 23] {
                for at in 0..len {
                    let s: String = (0..len).map(|i| if i == at { special } else { 'a' }).collect();
                    assert_eq!(json_str(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn counts_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 1_000_001, u64::MAX] {
            let mut out = Json(Vec::new());
            out.u64(n);
            assert_eq!(String::from_utf8(out.0).unwrap(), n.to_string());
        }
    }

    /// The reply is byte for byte what serializing the wire type gives, for a volume with
    /// options that need escaping, mounted and not.
    #[tokio::test]
    async fn a_get_reply_is_what_serde_json_writes_for_the_wire_type() {
        use crate::backend::fake::FakeBackend;
        use crate::protocol::wire::{GetResponse, Volume};
        use crate::service::VolumeService;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let settings = crate::config::Integration::defaults(std::path::Path::new("/unused"));
        let service = Arc::new(
            VolumeService::open("svc", FakeBackend::backend(&fake), settings, dir.path().into(), None).await.unwrap(),
        );
        let opts = [("size".to_owned(), "3".to_owned()), ("label".to_owned(), "a \"quoted\" välue\\".to_owned())];
        service.create("v1", &opts.into_iter().collect()).await.unwrap();
        for mounted in [false, true] {
            if mounted {
                service.mount("v1", Some("c1")).await.unwrap();
            }
            let info = service.get("v1").await.unwrap();
            let mountpoint = info.mountpoint.as_ref().map(|p| p.display().to_string());
            assert_eq!(mountpoint.is_some(), mounted);
            let ours = get_reply(&info, mountpoint.as_deref());
            let theirs = serde_json::to_vec(&GetResponse {
                volume: Volume {
                    name: info.name.clone(),
                    mountpoint,
                    created_at: Some(info.created_at.clone()),
                    status: Some(info.status.clone()),
                },
            })
            .unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let value = serde_json::json!({
            "n": 12, "neg": -3, "f": 1.5, "t": true, "nil": null,
            "list": ["x", 2, {"k": "v\"q"}], "empty": {}, "none": []
        });
        let mut out = Json(Vec::new());
        out.value(&value);
        assert_eq!(String::from_utf8(out.0).unwrap(), serde_json::to_string(&value).unwrap());
    }
}
