//! `switchyard check`: precise errors for broken files (snapshot tests), success for
//! the shipped table. Set `UPDATE_EXPECT=1` to rewrite the `.expected` files after a
//! deliberate change of wording, then review the diff.

use std::path::Path;
use std::process::Command;

use crate::support::BIN;

fn check(dir: &Path, file: &str) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg(file)
        .current_dir(dir)
        .output()
        .expect("run check");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn broken_files_get_line_column_and_help() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/check");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "expected at least 10 broken files, found {}",
        files.len()
    );
    let mut mismatches = Vec::new();
    for f in &files {
        let (code, out) = check(&dir, f);
        assert_eq!(code, Some(1), "{f} should fail the check:\n{out}");
        let expected_path = dir.join(f.replace(".toml", ".expected"));
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&expected_path, &out).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != out {
            mismatches.push(format!("--- {f} expected:\n{expected}\n--- got:\n{out}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_shipped_routes_toml_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out) = check(root, "routes.toml");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("routes.toml: ok"), "{out}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (code, out) = check(Path::new(env!("CARGO_MANIFEST_DIR")), "does-not-exist.toml");
    assert_eq!(code, Some(1));
    assert!(
        out.contains("does-not-exist.toml: error: cannot read"),
        "{out}"
    );
}

#[test]
fn explain_names_route_service_and_upstream_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .args([
            "explain",
            "--json",
            "GET",
            "http://api.example.com/api/orders/../users/7?x=1",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["route"], "users");
    assert_eq!(v["service"], "users");
    assert_eq!(v["normalized_path"], "/api/users/7");
    assert_eq!(v["upstream_path"], "/users/7?x=1");
    let out = Command::new(BIN)
        .args(["explain", "GET", "/nowhere"])
        .current_dir(root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("404 no_route"), "{text}");
}
