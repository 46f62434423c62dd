//! Snapshot tests of rendered diagnostics, driving the real `flowc` binary.
//!
//! Each `tests/diagnostics/NAME.flow` starts with `// codes: E.... W....`, the codes
//! `flowc check` must report, in order. The rendered output (no colour, width 100)
//! is snapshotted in `tests/snapshots/`; review changes with `cargo insta review`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn flowc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowc"))
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/diagnostics")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("tests/diagnostics exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "flow"))
        .collect();
    v.sort();
    v
}

fn expected_codes(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable case");
    let first = text.lines().next().unwrap_or("");
    let codes =
        first.strip_prefix("// codes:").unwrap_or_else(|| panic!("{} must start with `// codes:`", path.display()));
    codes.split_whitespace().map(String::from).collect()
}

/// The codes `flowc check --format json` reports for a file, in order.
fn json_codes(cwd: &Path, file: &str) -> (Vec<String>, Vec<serde_json::Value>) {
    let out = flowc().current_dir(cwd).args(["check", "--format", "json", file]).output().expect("flowc runs");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let objs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    let codes = objs.iter().map(|o| o["code"].as_str().expect("code").to_string()).collect();
    (codes, objs)
}

#[test]
fn every_case_reports_its_codes_and_renders_as_snapshotted() {
    let cases = cases();
    assert!(cases.len() >= 50, "only {} diagnostic cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_stem().and_then(|s| s.to_str()).expect("utf-8 name").to_string();
        let file = format!("{name}.flow");
        let (codes, objs) = json_codes(&dir(), &file);
        let want = expected_codes(case);
        if codes != want {
            failures.push(format!("{file}: expected {want:?}, got {codes:?}"));
        }
        for o in &objs {
            for key in ["file", "line", "column", "end", "code", "severity", "message", "help"] {
                assert!(o.get(key).is_some(), "{file}: JSON diagnostic lacks `{key}`: {o}");
            }
        }
        let out = flowc().current_dir(dir()).args(["check", "--width", "100", &file]).output().expect("flowc runs");
        let has_error = want.iter().any(|c| c.starts_with('E'));
        assert_eq!(out.status.code(), Some(if has_error { 1 } else { 0 }), "{file}: exit code");
        let rendered = String::from_utf8(out.stderr).expect("utf-8 output");
        insta::with_settings!({ prepend_module_to_snapshot => false, snapshot_path => "snapshots/diagnostics", omit_expression => true }, {
            insta::assert_snapshot!(name, rendered);
        });
    }
    assert!(failures.is_empty(), "cases with unexpected codes:\n{}", failures.join("\n"));
}

#[test]
fn every_documented_code_has_a_case() {
    let index = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/errors.md"))
        .expect("docs/errors.md");
    let documented: BTreeSet<String> = index
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|l| l.split(':').next())
        .map(|c| c.trim().to_string())
        .collect();
    let covered: BTreeSet<String> = cases().iter().flat_map(|c| expected_codes(c)).collect();
    let missing: Vec<_> = documented.difference(&covered).collect();
    assert!(missing.is_empty(), "documented codes without a case in tests/diagnostics: {missing:?}");
    let undocumented: Vec<_> = covered.difference(&documented).collect();
    assert!(undocumented.is_empty(), "codes reported but not in docs/errors.md: {undocumented:?}");
}

#[test]
fn five_independent_mistakes_give_exactly_five_errors() {
    let cwd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/no_cascade");
    let (codes, objs) = json_codes(&cwd, "five_mistakes.flow");
    let errors: Vec<_> = objs.iter().filter(|o| o["severity"] == "error").collect();
    assert_eq!(errors.len(), 5, "got {codes:?}: {objs:#?}");
    let lines: Vec<u64> = errors.iter().map(|o| o["line"].as_u64().expect("line")).collect();
    assert_eq!(lines, vec![4, 7, 9, 17, 21], "{objs:#?}");
}

#[test]
fn clean_files_exit_zero_and_deny_warnings_fails_on_warnings() {
    let out = flowc().current_dir(dir()).args(["check", "unused_declarations.flow"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let out = flowc()
        .current_dir(dir())
        .args(["check", "--deny-warnings", "unused_declarations.flow"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn explain_prints_the_error_index_section() {
    let out = flowc().args(["explain", "e0201"]).output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.starts_with("## E0201: incompatible types"), "{text}");
    let out = flowc().args(["explain", "E9999"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
}
