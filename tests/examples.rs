//! The examples and the language reference, checked by the real `flowc` binary:
//! every `examples/*.flow` checks clean (no warnings either), every ```flow block of
//! docs/language.md is a complete program without errors, and the typed IR and
//! logical plan, the physical plan (at parallelism 2) and its Graphviz form of each
//! example are snapshotted.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn flowc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowc"))
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "flow"))
        .collect();
    v.sort();
    v
}

#[test]
fn examples_check_clean() {
    let ex = examples();
    assert!(ex.len() >= 5, "expected the flagship and four more examples");
    for e in ex {
        let out = flowc().arg("check").arg("--deny-warnings").arg(&e).output().expect("flowc runs");
        assert!(out.status.success(), "{}:\n{}", e.display(), String::from_utf8_lossy(&out.stderr));
        let header = std::fs::read_to_string(&e).expect("readable");
        assert!(header.starts_with("//"), "{} must open with a comment header saying what it shows", e.display());
    }
}

#[test]
fn examples_ir_plan_and_physical_snapshots() {
    for e in examples() {
        let name = e.file_stem().and_then(|s| s.to_str()).expect("name").to_string();
        for stage in ["ir", "plan", "physical", "dot"] {
            let out = flowc()
                .current_dir(root())
                .arg("compile")
                .arg(format!("examples/{name}.flow"))
                .args(["--emit", stage, "--parallelism", "2"])
                .output()
                .expect("runs");
            assert!(out.status.success(), "{name} --emit {stage}: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).expect("utf-8");
            insta::with_settings!({ prepend_module_to_snapshot => false, snapshot_path => "snapshots/examples", omit_expression => true }, {
                insta::assert_snapshot!(format!("{name}.{stage}"), text);
            });
        }
    }
}

#[test]
fn every_flow_block_of_the_language_reference_checks() {
    let doc = std::fs::read_to_string(root().join("docs/language.md")).expect("docs/language.md");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut blocks = 0;
    let mut in_block = false;
    let mut start_line = 0;
    let mut text = String::new();
    let mut failures = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        if !in_block && line.trim_start() == "```flow" {
            in_block = true;
            start_line = i + 1;
            text.clear();
        } else if in_block && line.trim_start().starts_with("```") {
            in_block = false;
            blocks += 1;
            let path = dir.path().join(format!("block_{start_line}.flow"));
            std::fs::write(&path, &text).expect("write block");
            let out = flowc().arg("check").arg(&path).output().expect("flowc runs");
            if !out.status.success() {
                failures.push(format!("docs/language.md:{start_line}:\n{}", String::from_utf8_lossy(&out.stderr)));
            }
        } else if in_block {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(blocks >= 20, "only {blocks} flow blocks in docs/language.md");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
