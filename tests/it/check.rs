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
        out.contains("does-not-exist.toml: error[SY000]: cannot read"),
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

fn json_check(dir: &Path, file: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(BIN)
        .args(["check", "--format", "json"])
        .args(extra)
        .arg(file)
        .current_dir(dir)
        .output()
        .expect("run check");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), v)
}

#[test]
fn a_table_with_one_of_each_finding_reports_exactly_those_codes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/lint");
    let (code, v) = json_check(&dir, "one-of-each.toml", &[]);
    assert_eq!(code, Some(1));
    let mut codes: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect();
    codes.sort();
    codes.dedup();
    let expected: Vec<String> = (3..=21).map(|n| format!("SY{n:03}")).collect();
    assert_eq!(codes, expected, "{v:#}");
    for f in v["findings"].as_array().unwrap() {
        assert!(
            f["line"].as_u64().is_some(),
            "every finding has a line: {f}"
        );
    }
}

#[test]
fn the_shipped_routes_toml_has_no_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, v) = json_check(root, "routes.toml", &["--strict"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 0, "{v:#}");
}

#[test]
fn warnings_fail_only_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        "[services.a]\nendpoints = [\"127.0.0.1:1\"]\n[services.unused]\nendpoints = [\"127.0.0.1:2\"]\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nservice = \"a\"\n",
    )
    .unwrap();
    let (code, v) = json_check(dir.path(), "t.toml", &[]);
    assert_eq!(code, Some(0));
    assert_eq!(v["warnings"], 1);
    assert_eq!(v["findings"][0]["code"], "SY015");
    let (code, _) = json_check(dir.path(), "t.toml", &["--strict"]);
    assert_eq!(code, Some(1));
}

#[test]
fn github_format_prints_annotations_on_the_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/check");
    let out = Command::new(BIN)
        .args(["check", "--format", "github", "02-unknown-service.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "::error file=02-unknown-service.toml,line=10,col=11,title=SY005::unknown service `usres` (did you mean `users`?)"
        ),
        "{text}"
    );
    assert!(
        text.contains("::warning file=02-unknown-service.toml,line=4,col=11,title=SY015::"),
        "{text}"
    );
}
