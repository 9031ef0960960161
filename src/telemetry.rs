//! Logging: tracing-subscriber with the level from `RUST_LOG`, else the configured level, and a
//! writer that keeps credentials out of every line.
//!
//! No credential reaches the log at any level, whoever formats it (the AWS SDK's debug output
//! prints an access key ID as it is): every line is scrubbed before it is written, of the
//! secrets the daemon was given (its config's keys, `AWS_*` credentials in the environment)
//! and of anything shaped like an AWS access key ID (`AKIA…`, `ASIA…`: four letters and 16
//! upper-case letters or digits). A leaf module.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What replaces a secret in a log line.
pub const REDACTED: &str = "** redacted **";

/// The prefixes of AWS access key IDs (long-term, temporary, and the other principal kinds).
const KEY_ID_PREFIXES: [&str; 7] = ["AKIA", "ASIA", "AIDA", "AROA", "ANPA", "ANVA", "APKA"];

/// The length of an AWS access key ID.
const KEY_ID_LEN: usize = 20;

/// Secrets shorter than this are not scrubbed (they would match ordinary words).
const MIN_SECRET_LEN: usize = 6;

/// The secrets to scrub, set once at start.
static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// `line` with every secret and access-key-shaped word replaced by [`REDACTED`].
pub fn scrub(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    if KEY_ID_PREFIXES.iter().any(|p| out.contains(p)) {
        out = scrub_key_ids(&out);
    }
    out
}

/// Replaces access key IDs: a prefix, 16 upper-case letters or digits, not inside a longer word.
fn scrub_key_ids(text: &str) -> String {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let starts = KEY_ID_PREFIXES.iter().any(|p| bytes[i..].starts_with(p.as_bytes()));
        let whole = starts
            && (i == 0 || !word(bytes[i - 1]))
            && bytes.len() >= i + KEY_ID_LEN
            && bytes[i..i + KEY_ID_LEN].iter().all(|b| word(*b))
            && bytes.get(i + KEY_ID_LEN).is_none_or(|b| !word(*b));
        if whole {
            out.push_str(REDACTED);
            i += KEY_ID_LEN;
        } else {
            // Advance by one character (the text is UTF-8; key IDs are ASCII).
            let c = text[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(c);
            i += c.len_utf8().max(1);
        }
    }
    out
}

/// Writes one formatted event to stderr, scrubbed, in one write.
#[derive(Debug, Default)]
pub struct ScrubbingWriter {
    buf: Vec<u8>,
}

impl Write for ScrubbingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        let line = scrub(&text, SECRETS.get().map_or(&[], Vec::as_slice));
        self.buf.clear();
        std::io::stderr().lock().write_all(line.as_bytes())
    }
}

impl Drop for ScrubbingWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Makes a [`ScrubbingWriter`] per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubbingStderr;

impl<'a> MakeWriter<'a> for ScrubbingStderr {
    type Writer = ScrubbingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter::default()
    }
}

/// Installs the global subscriber, writing to stderr, scrubbed of `secrets` (and of the `AWS_*`
/// credentials in the environment). `RUST_LOG` wins over `level`.
pub fn init(level: &str, json: bool, secrets: Vec<String>) {
    let mut all = secrets;
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        if let Ok(v) = std::env::var(var) {
            all.push(v);
        }
    }
    all.retain(|s| s.len() >= MIN_SECRET_LEN);
    // Longest first, so a secret that contains another is replaced whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let _ = SECRETS.set(all);
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    let fmt = tracing_subscriber::fmt::layer().with_writer(ScrubbingStderr).with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json { registry.with(fmt.json()).try_init() } else { registry.with(fmt).try_init() };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
}

/// The filter: `RUST_LOG`'s `target=level` directives (`info`, `rexray=debug,hyper=warn`) when
/// set and valid, else `level`. A static filter: checking it costs nothing per span, where a
/// filter that can match span fields would take a lock on every enter and exit.
fn filter(rust_log: Option<&str>, level: &str) -> Targets {
    if let Some(parsed) = rust_log.filter(|s| !s.trim().is_empty()).and_then(|s| s.parse::<Targets>().ok()) {
        return parsed;
    }
    level.parse::<Targets>().unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_key_ids_are_scrubbed() {
        let secrets = vec!["wJalrXUtnFEMI/K7MDENG".to_owned(), "short".to_owned()];
        let line = r#"Credentials { access_key_id: "AKIAIOSFODNN7EXAMPLE", secret_access_key: "wJalrXUtnFEMI/K7MDENG" } short"#;
        let out = scrub(line, &secrets);
        assert!(!out.contains("AKIAIOSFODNN7EXAMPLE") && !out.contains("wJalrXUtnFEMI"), "{out}");
        assert!(out.contains("short"), "too short to be a secret: {out}");
        assert_eq!(scrub("ASIAABCDEFGHIJKLMNOP", &[]), REDACTED);
        // Not key IDs: too short, too long, lower case, inside a word.
        for keep in ["AKIA123", "AKIAIOSFODNN7EXAMPLEX", "akiaiosfodnn7example", "XAKIAIOSFODNN7EXAMPLE", "ümlaut ÄKIA"]
        {
            assert_eq!(scrub(keep, &[]), keep);
        }
    }

    #[test]
    fn the_filter_takes_rust_log_directives_else_the_level() {
        use tracing::Level;
        let f = filter(Some("rexray=debug,hyper=warn"), "info");
        assert!(f.would_enable("rexray::service", &Level::DEBUG));
        assert!(!f.would_enable("hyper::proto", &Level::INFO));
        let f = filter(None, "warn");
        assert!(f.would_enable("anything", &Level::WARN) && !f.would_enable("anything", &Level::INFO));
        let f = filter(Some("[bad{"), "error");
        assert!(!f.would_enable("x", &Level::WARN));
    }

    #[test]
    fn the_writer_scrubs_each_event_whole() {
        let mut w = ScrubbingWriter::default();
        w.write_all(b"key AKIA").unwrap();
        w.write_all(b"IOSFODNN7EXAMPLE split across writes\n").unwrap();
        let text = scrub(&String::from_utf8_lossy(&w.buf), &[]);
        w.buf.clear();
        assert_eq!(text, format!("key {REDACTED} split across writes\n"));
    }
}
