//! YAML text → flat, case-insensitive, line-numbered `dotted.key → value` entries.
//!
//! REX-Ray reads its config through viper, which treats keys case-insensitively and lets any
//! nesting be written as a dotted key (`libstorage: {service: ebs}` is the same as
//! `libstorage.service: ebs`). We mirror that by flattening the YAML tree into dotted keys
//! compared in lower case, keeping the line of every key so errors and warnings can point at it.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::location;

/// A leaf value, with every scalar kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// `key:` with nothing after it, `~`, `null` or an empty mapping: the key is not set.
    Null,
    /// A string, number or boolean, as text.
    Scalar(String),
    /// A sequence of scalars (`storageDrivers: [ec2]`).
    List(Vec<String>),
    /// A sequence holding mappings or sequences: never valid for a known key.
    Nested,
}

/// One flattened key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The dotted key as written (original case), for messages.
    pub key: String,
    /// 1-based line of the key.
    pub line: u64,
    /// The value.
    pub value: Value,
}

/// The flattened file: entries in declaration order, indexed by lower-cased dotted key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Document {
    /// Entries in the order they first appear.
    entries: Vec<Entry>,
    /// Lower-cased dotted key → position in `entries`.
    index: HashMap<String, usize>,
}

impl Document {
    /// The entry for a lower-cased dotted key.
    pub(crate) fn get(&self, lower_key: &str) -> Option<&Entry> {
        self.index.get(lower_key).and_then(|&i| self.entries.get(i))
    }

    /// Every entry in declaration order, paired with its lower-cased key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (String, &Entry)> {
        self.entries.iter().map(|e| (e.key.to_lowercase(), e))
    }

    /// Adds an entry; a later entry for the same (case-insensitive) key replaces the earlier
    /// value in place and yields a warning.
    fn insert(&mut self, entry: Entry, file: Option<&Path>, warnings: &mut Vec<String>) {
        let lower = entry.key.to_lowercase();
        match self.index.get(&lower).and_then(|&i| self.entries.get_mut(i)) {
            Some(existing) => {
                warnings.push(format!(
                    "{}: duplicate key \"{}\" (also set at line {}); the later value is used",
                    location(file, Some(entry.line)),
                    entry.key,
                    existing.line
                ));
                *existing = entry;
            }
            None => {
                self.index.insert(lower, self.entries.len());
                self.entries.push(entry);
            }
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// What is wrong, without the location.
    pub message: String,
}

/// Parses YAML text into a [`Document`], plus warnings (duplicate or non-scalar keys).
///
/// # Errors
///
/// [`SyntaxError`] when the text is not YAML, holds several documents, or its top level is not
/// a mapping.
pub(crate) fn parse_document(text: &str, file: Option<&Path>) -> Result<(Document, Vec<String>), SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    // Keep `0755` (file modes) and `1_000` as written instead of reading them as numbers.
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    // Keep `yes`/`on`/`y` as text (we parse booleans ourselves), so that a key `y` stays `y`.
    options.strict_booleans = true;
    options.non_finite_float_policy = serde_saphyr::options::NonFiniteFloatPolicy::AsString;
    // Duplicates are merged by `Document::insert` with a warning, like viper's last-wins.
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::PassThrough;

    let root: Spanned<Node> = serde_saphyr::from_str_with_options(text, options).map_err(|e| syntax_error(&e))?;
    let mut doc = Document::default();
    let mut warnings = Vec::new();
    match root.value {
        Node::Null => {}
        Node::Map(pairs) => flatten(&mut doc, "", pairs, file, &mut warnings),
        Node::Scalar(_) | Node::Seq(_) => {
            return Err(SyntaxError {
                line: Some(root.referenced.line()),
                message: "the top level must be a mapping of keys to values".to_string(),
            })
        }
    }
    Ok((doc, warnings))
}

/// Turns a serde-saphyr error into a one-line message plus line number.
fn syntax_error(err: &serde_saphyr::Error) -> SyntaxError {
    let location = err.location();
    let line = location.map(|l| l.line()).filter(|&l| l > 0);
    let mut message = err.without_snippet().to_string();
    if let Some(loc) = location {
        let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    let message = message.lines().next().unwrap_or("invalid YAML").trim().to_string();
    SyntaxError { line, message }
}

/// Flattens a mapping under `prefix` (original case, empty at the top).
fn flatten(
    doc: &mut Document,
    prefix: &str,
    pairs: Vec<(Spanned<Node>, Spanned<Node>)>,
    file: Option<&Path>,
    warnings: &mut Vec<String>,
) {
    for (key, value) in pairs {
        let line = key.referenced.line();
        let name = match key.value {
            Node::Scalar(s) => s,
            Node::Null | Node::Seq(_) | Node::Map(_) => {
                warnings.push(format!(
                    "{}: ignored a key that is not a plain string{}",
                    location(file, Some(line)),
                    if prefix.is_empty() { String::new() } else { format!(" under \"{prefix}\"") }
                ));
                continue;
            }
        };
        let full = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
        let value = match value.value {
            Node::Null => Value::Null,
            Node::Scalar(s) => Value::Scalar(s),
            Node::Map(inner) if inner.is_empty() => Value::Null,
            Node::Map(inner) => {
                flatten(doc, &full, inner, file, warnings);
                continue;
            }
            Node::Seq(items) => {
                let mut list = Vec::with_capacity(items.len());
                let mut nested = false;
                for item in items {
                    match item.value {
                        Node::Scalar(s) => list.push(s),
                        Node::Null => {}
                        Node::Seq(_) | Node::Map(_) => nested = true,
                    }
                }
                if nested {
                    Value::Nested
                } else {
                    Value::List(list)
                }
            }
        };
        doc.insert(Entry { key: full, line, value }, file, warnings);
    }
}

/// A YAML node with every scalar as text; children carry their source location.
#[derive(Debug)]
enum Node {
    /// `~`, `null` or nothing.
    Null,
    /// A string, number or boolean, as text.
    Scalar(String),
    /// A sequence.
    Seq(Vec<Spanned<Node>>),
    /// A mapping, in source order, duplicates included.
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Builds a [`Node`] from whatever the YAML deserializer finds.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::Scalar(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<Spanned<Node>, Spanned<Node>>()? {
            pairs.push(pair);
        }
        Ok(Node::Map(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Document, Vec<String>) {
        parse_document(text, None).expect("valid yaml")
    }

    fn scalar(doc: &Document, key: &str) -> Option<String> {
        match &doc.get(key)?.value {
            Value::Scalar(s) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn flattens_nested_and_dotted_keys() {
        let (doc, warnings) = parse(
            "libstorage:\n  service: ebs\n  integration.volume:\n    operations: {mount: {preEmpt: true}}\nrexray.logLevel: warn\n",
        );
        assert!(warnings.is_empty());
        assert_eq!(scalar(&doc, "libstorage.service").as_deref(), Some("ebs"));
        let e = doc.get("libstorage.integration.volume.operations.mount.preempt").expect("entry");
        assert_eq!(e.key, "libstorage.integration.volume.operations.mount.preEmpt");
        assert_eq!(e.line, 4);
        assert_eq!(scalar(&doc, "rexray.loglevel").as_deref(), Some("warn"));
        assert_eq!(doc.get("rexray.loglevel").map(|e| e.line), Some(5));
    }

    #[test]
    fn scalars_are_text() {
        let (doc, _) = parse("a: 0755\nb: yes\nc: 16\nd: 1.5\ne: True\nf: 'x'\ng: 1_000\nh: .inf\n");
        assert_eq!(scalar(&doc, "a").as_deref(), Some("0755"));
        assert_eq!(scalar(&doc, "b").as_deref(), Some("yes"));
        assert_eq!(scalar(&doc, "c").as_deref(), Some("16"));
        assert_eq!(scalar(&doc, "d").as_deref(), Some("1.5"));
        assert_eq!(scalar(&doc, "e").as_deref(), Some("true"));
        assert_eq!(scalar(&doc, "f").as_deref(), Some("x"));
        assert_eq!(scalar(&doc, "g").as_deref(), Some("1_000"));
        assert_eq!(scalar(&doc, "h").as_deref(), Some(".inf"));
    }

    #[test]
    fn nulls_lists_and_empty_maps() {
        let (doc, _) = parse("a:\nb: ~\nc: {}\nd: [ec2, x]\ne: [{x: 1}]\nf: []\n");
        for k in ["a", "b", "c"] {
            assert_eq!(doc.get(k).map(|e| &e.value), Some(&Value::Null), "{k}");
        }
        assert_eq!(doc.get("d").map(|e| &e.value), Some(&Value::List(vec!["ec2".into(), "x".into()])));
        assert_eq!(doc.get("e").map(|e| &e.value), Some(&Value::Nested));
        assert_eq!(doc.get("f").map(|e| &e.value), Some(&Value::List(vec![])));
    }

    #[test]
    fn empty_and_comment_only_documents() {
        assert_eq!(parse("").0.iter().count(), 0);
        assert_eq!(parse("# nothing\n").0.iter().count(), 0);
    }

    #[test]
    fn duplicates_warn_and_last_wins() {
        let (doc, warnings) = parse("rexray:\n  logLevel: warn\n  loglevel: debug\n");
        assert_eq!(scalar(&doc, "rexray.loglevel").as_deref(), Some("debug"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("duplicate key \"rexray.loglevel\""));
        assert!(warnings[0].contains("line 2"));
    }

    #[test]
    fn repeated_sections_merge() {
        let (doc, warnings) = parse("a:\n  x: 1\nb: 2\na:\n  y: 3\n");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(scalar(&doc, "a.x").as_deref(), Some("1"));
        assert_eq!(scalar(&doc, "a.y").as_deref(), Some("3"));
    }

    #[test]
    fn syntax_errors_have_lines() {
        let err = parse_document("a: [1\nb: 2\n", None).expect_err("bad yaml");
        assert_eq!(err.line, Some(2));
        assert!(!err.message.contains("line 2, column"), "{}", err.message);
        let err = parse_document("a: b: c\n", None).expect_err("bad yaml");
        assert_eq!(err.line, Some(1));
        let err = parse_document("- a\n- b\n", None).expect_err("not a map");
        assert!(err.message.contains("mapping"));
        let err = parse_document("a: 1\n---\nb: 2\n", None).expect_err("two docs");
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn never_panics_on_odd_input() {
        let deep = format!("a: {}{}", "[".repeat(500), "]".repeat(500));
        let inputs = [
            deep.as_str(),
            "? [1, 2]\n: 3\n",
            "a: &x {b: 1}\nc: *x\n",
            "a: !custom 5\n",
            "\u{0}",
            "a: \"unterminated\n",
            "a:\n\t- b\n",
            "{a: 1, a: 2}",
            "~",
            "42",
            "<<: {a: 1}\n",
        ];
        for input in inputs {
            let _ = parse_document(input, None);
        }
        let (doc, warnings) = parse("? [1, 2]\n: 3\nk: v\n");
        assert_eq!(warnings.len(), 1);
        assert_eq!(scalar(&doc, "k").as_deref(), Some("v"));
    }
}
