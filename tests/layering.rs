//! The module graph: dependencies point down only, with no circle, and the rules that keep the
//! layers honest (see `ARCHITECTURE.md`). It reads the sources, so it fails on the import that
//! breaks a rule, naming the file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may use (`crate::<module>`).
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "protocol",
            "csi",
            "service",
            "backend",
            "os",
            "config",
            "server",
            "metrics",
            "name",
            "crashpoint",
            "deadline",
            "human",
            "progress",
            "telemetry",
        ],
    ),
    ("protocol", &["service", "backend", "server", "metrics", "name", "deadline", "human", "progress"]),
    ("csi", &["service", "backend", "config", "name", "deadline"]),
    ("service", &["backend", "config", "metrics", "name", "crashpoint", "deadline", "human", "progress"]),
    ("backend", &["os", "config", "metrics", "name", "crashpoint", "deadline", "human", "progress"]),
    ("os", &["human"]),
    ("config", &[]),
    ("server", &[]),
    ("metrics", &[]),
    ("name", &[]),
    ("crashpoint", &[]),
    ("deadline", &["human"]),
    ("human", &[]),
    ("progress", &[]),
    ("telemetry", &[]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`src/backend/ebs/mod.rs` → `backend`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

/// Every `crate::<module>` a line names, including `use crate::{a, b::c}` groups.
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Whether a line is a comment (doc links name modules without depending on them).
fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("//")
}

struct Source {
    module: String,
    file: PathBuf,
    text: String,
}

fn all_sources() -> Vec<Source> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            let module = module_of(&src, &file)?;
            let text = std::fs::read_to_string(&file).unwrap();
            Some(Source { module, file, text })
        })
        .filter(|s| s.module != "lib" && s.module != "main")
        // Test code and test doubles (compiled only for tests) may reach any layer.
        .filter(|s| {
            let name = s.file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name != "tests.rs" && !name.ends_with("_tests.rs") && name != "fake.rs"
        })
        .collect()
}

/// The lines of a source outside its `#[cfg(test)] mod tests` (tests may use fakes of any layer).
fn non_test_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let end = text.find("#[cfg(test)]\nmod ").unwrap_or(text.len());
    text[..end].lines().enumerate().map(|(i, l)| (i + 1, l))
}

#[test]
fn dependencies_point_down_only() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(m, deps)| (*m, deps.iter().copied().collect())).collect();
    let mut problems = Vec::new();
    for source in all_sources() {
        let Some(may) = allowed.get(source.module.as_str()) else {
            problems.push(format!("{}: module {} is not in the layer table", source.file.display(), source.module));
            continue;
        };
        for (n, line) in non_test_lines(&source.text) {
            if is_comment(line) {
                continue;
            }
            for used in crate_refs(line) {
                if used != source.module && !may.contains(used.as_str()) {
                    problems.push(format!(
                        "{}:{n}: {} uses {used}: {}",
                        source.file.display(),
                        source.module,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "imports that point up or sideways:\n{}", problems.join("\n"));
}

#[test]
fn the_layer_table_has_no_circle() {
    let graph: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    fn visit<'a>(m: &'a str, graph: &BTreeMap<&'a str, &'a [&'a str]>, path: &mut Vec<&'a str>) {
        assert!(!path.contains(&m), "circle: {} → {m}", path.join(" → "));
        path.push(m);
        for dep in graph.get(m).copied().unwrap_or_default() {
            visit(dep, graph, path);
        }
        path.pop();
    }
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new());
    }
}

#[test]
fn the_sdk_unsafe_code_and_processes_stay_in_their_modules() {
    let mut problems = Vec::new();
    for source in all_sources() {
        let rel = source.file.to_string_lossy().replace('\\', "/");
        let rel = rel.split("/src/").nth(1).unwrap_or(&rel).to_owned();
        for (n, line) in non_test_lines(&source.text) {
            if is_comment(line) {
                continue;
            }
            if (line.contains("aws_sdk_") || line.contains("aws_config") || line.contains("aws_smithy"))
                && rel != "backend/ebs/cloud.rs"
            {
                problems.push(format!("{rel}:{n}: the AWS SDK outside backend/ebs/cloud.rs: {}", line.trim()));
            }
            if line.contains("unsafe ") && !rel.starts_with("os/linux/") {
                problems.push(format!("{rel}:{n}: unsafe outside os/linux: {}", line.trim()));
            }
            if line.contains("Command::new") && !rel.starts_with("os/linux/") && !rel.starts_with("cli/") {
                problems.push(format!("{rel}:{n}: a process outside os/linux and cli: {}", line.trim()));
            }
            let fs_ok = ["os/", "cli/", "config/", "service/state.rs", "server.rs"].iter().any(|p| rel.starts_with(p));
            if line.contains("std::fs::") && !fs_ok {
                problems.push(format!("{rel}:{n}: file access outside the os layer: {}", line.trim()));
            }
            if line.contains("std::env::var")
                && !(rel.starts_with("cli/")
                    || rel.starts_with("config/")
                    || rel == "telemetry.rs"
                    || rel == "crashpoint.rs"
                    || rel == "server.rs")
            {
                problems.push(format!(
                    "{rel}:{n}: the environment read outside the composition root and config: {}",
                    line.trim()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
