//! The library's modules form layers, and imports point down only.
//!
//! ARCHITECTURE.md states the same order in words. This test reads every
//! file under `src/` (the binary's `main.rs` and `cli/` sit on top of
//! everything and are skipped), collects the top-level modules it names
//! through `crate::`, and fails on any arrow that points up or sideways
//! between two modules of one layer. Test code inside `src/` is held to the
//! same rule.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom first. A module may use modules of lower layers, and itself.
const LAYERS: &[&[&str]] = &[
    &["numeric", "fsutil", "simd"],
    &["data"],
    &["cache"],
    &["error"],
    &["model"],
    &["report", "prune", "teacher"],
    &["train"],
    &["sweep"],
];

/// The crate root's re-exports (`src/lib.rs`) and the modules they come
/// from: `crate::Error` is an import of `error`.
const ROOT_REEXPORTS: &[(&str, &str)] = &[("Error", "error"), ("Result", "error")];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("src entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/cache/reader.rs` -> cache).
fn owner(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Top-level modules named after `crate::` in code (comments removed),
/// including `use crate::{a::x, b}` groups.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level names of the group, skipping nested braces.
            let mut depth = 0usize;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        found.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(after));
        }
        rest = after;
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let module = owner(&src, file);
        if module == "main" || module == "cli" || module == "lib" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            violations.push(format!(
                "{}: module '{module}' is in no layer of tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("source is readable");
        for dep in crate_imports(&text) {
            let dep = match ROOT_REEXPORTS.iter().find(|(name, _)| *name == dep) {
                Some((_, from)) => from.to_string(),
                None => dep,
            };
            if dep == module {
                continue;
            }
            match layer_of(&dep) {
                Some(l) if l < own => {}
                Some(_) => violations.push(format!(
                    "{}: '{module}' imports '{dep}', which is not below it",
                    file.display()
                )),
                None if dep.starts_with(char::is_uppercase) => violations.push(format!(
                    "{}: '{module}' imports the crate root's '{dep}', which ROOT_REEXPORTS in tests/layers.rs does not place",
                    file.display()
                )),
                None => violations.push(format!(
                    "{}: '{module}' imports '{dep}', a module in no layer",
                    file.display()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layer order (ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_import_reader_sees_groups_and_paths() {
    let text = "use crate::{cache::{A, B}, data::Dataset};\n\
                // crate::sweep in a comment\n\
                fn f() { crate::model::io::x(); }\n";
    let got: Vec<_> = crate_imports(text).into_iter().collect();
    assert_eq!(got, ["cache", "data", "model"]);
}
