//! `switchyard diff`: structural diff, replay, markdown, exit codes.

use std::path::Path;
use std::process::Command;

use crate::support::BIN;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/replay");
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run diff");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_log(lines: &[&str]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), lines.join("\n")).unwrap();
    f
}

#[test]
fn replay_reports_exactly_the_requests_a_prefix_change_moves() {
    let log = write_log(&[
        r#"{"method":"GET","host":"api.example.com","path":"/api/users/v2/1","status":200}"#,
        r#"{"method":"GET","host":"api.example.com","path":"/api/users/v2/2","status":200}"#,
        r#"{"method":"GET","host":"api.example.com","path":"/api/users/7","status":200}"#,
        "GET http://api.example.com/api/users/v3/1",
        "GET /static/app.js",
    ]);
    let (code, out, err) = run(&[
        "diff",
        "--format",
        "json",
        "old.toml",
        "new.toml",
        "--replay",
        log.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["replay"]["total"], 5);
    assert_eq!(v["replay"]["changed"], 3, "{v:#}");
    let moved = v["replay"]["moved"].as_array().unwrap();
    let v2 = moved
        .iter()
        .find(|m| m["requests"] == "GET /api/users/v2/*")
        .unwrap();
    assert_eq!(v2["count"], 2);
    assert_eq!(v2["before"], "users-v2 (route users-v2)");
    assert_eq!(v2["after"], "users (route users)");
    let v3 = moved
        .iter()
        .find(|m| m["requests"] == "GET /api/users/v3/*")
        .unwrap();
    assert_eq!(v3["count"], 1);
    let changed: Vec<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["orders", "users-v2"]);
}

#[test]
fn markdown_is_a_pr_comment() {
    let (code, out, _) = run(&["diff", "--format", "markdown", "old.toml", "new.toml"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("### Route table changes\n"), "{out}");
    assert!(
        out.contains("| ~ | route | `orders` | backends | `orders` | `orders 90, users-v2 10` |"),
        "{out}"
    );
}

#[test]
fn fail_on_change_fails_only_for_protected_paths() {
    let (code, _, err) = run(&[
        "diff",
        "old.toml",
        "new.toml",
        "--fail-on-change",
        "/api/orders",
    ]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, _) = run(&[
        "diff",
        "old.toml",
        "new.toml",
        "--fail-on-change",
        "/api/payments",
    ]);
    assert_eq!(code, Some(0));
    let (code, _, _) = run(&["diff", "old.toml", "old.toml", "--fail-on-change", "/"]);
    assert_eq!(code, Some(0));
}

#[test]
fn an_invalid_table_or_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[routes]]\nname = \"x\"\n").unwrap();
    let (code, _, err) = run(&["diff", "old.toml", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("error[SY011]"), "{err}");
    let (code, _, err) = run(&[
        "diff",
        "old.toml",
        "new.toml",
        "--replay",
        "/does/not/exist.log",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/does/not/exist.log"), "{err}");
    let log = write_log(&["{not json", "GET"]);
    let (code, out, _) = run(&[
        "diff",
        "old.toml",
        "new.toml",
        "--replay",
        log.path().to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0));
    assert!(out.contains("2 input lines could not be read"), "{out}");
}
