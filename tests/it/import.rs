//! `switchyard import`: every nginx fixture in `tests/fixtures/nginx` is imported by the
//! real binary; a produced table must pass `switchyard check` without warnings, and
//! stdout/stderr are compared with the fixture's `.expected` file. Fixtures named
//! `NN-error-*.conf` must fail with exit 1 and nothing on stdout. Set
//! `UPDATE_EXPECT=1` to rewrite the `.expected` files after a deliberate change, then
//! review the diff.

use std::path::Path;
use std::process::Command;

use crate::support::BIN;

pub fn fixtures_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx")
}

/// The top-level fixtures (included files live in subfolders).
pub fn fixtures() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    files.sort();
    files
}

/// Run `switchyard import FILE` in the fixtures directory.
pub fn import(file: &str) -> (Option<i32>, String, String) {
    import_in(&fixtures_dir(), file)
}

/// Run `switchyard import FILE` in `dir`: exit code, stdout, stderr.
pub fn import_in(dir: &Path, file: &str) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("import")
        .arg(file)
        .current_dir(dir)
        .output()
        .expect("run import");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_fixture_imports_to_a_valid_table_and_matches_its_snapshot() {
    let files = fixtures();
    let good = files.iter().filter(|f| !f.contains("-error-")).count();
    assert!(
        good >= 10,
        "expected at least 10 importable fixtures, found {good}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    for f in &files {
        let (code, stdout, stderr) = import(f);
        if f.contains("-error-") {
            assert_eq!(code, Some(1), "{f} should fail:\n{stderr}");
            assert!(
                stdout.is_empty(),
                "{f}: nothing on stdout on error:\n{stdout}"
            );
            assert!(stderr.contains(": error: "), "{f}: {stderr}");
        } else {
            assert_eq!(code, Some(0), "{f} should import:\n{stderr}");
            let table = tmp.path().join(f.replace(".conf", ".toml"));
            std::fs::write(&table, &stdout).unwrap();
            let check = Command::new(BIN).arg("check").arg(&table).output().unwrap();
            let text = String::from_utf8_lossy(&check.stdout);
            // Clean, except SY016: nginx tables often give single locations long
            // proxy_read_timeouts, which the lint rightly points out.
            let other_warnings = text
                .lines()
                .filter(|l| l.contains(": warning[") && !l.contains(": warning[SY016]"))
                .count();
            assert!(
                check.status.success() && text.contains(" ok (") && other_warnings == 0,
                "{f}: the imported table does not pass `check` cleanly:\n{text}\n{stdout}"
            );
            for line in stderr.lines() {
                assert!(
                    line.contains(": not translated: ") || line.contains(": note: "),
                    "{f}: unexpected stderr line `{line}`"
                );
            }
        }
        let got = format!(
            "$ switchyard import {f}\nexit: {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            code.map_or("signal".to_string(), |c| c.to_string())
        );
        let expected_path = fixtures_dir().join(f.replace(".conf", ".expected"));
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != got {
            mismatches.push(format!("--- {f} expected:\n{expected}\n--- got:\n{got}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn a_missing_file_is_an_error() {
    let (code, stdout, stderr) = import("does-not-exist.conf");
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("does-not-exist.conf: error: cannot read"),
        "{stderr}"
    );
}

/// `N`, `M`, `K`, `S`, `D` of `verify: N requests, M agree, K differ, S skipped (not
/// translated), D noted (…)`.
fn verify_counts(stderr: &str) -> Option<[usize; 5]> {
    let line = stderr.lines().find(|l| l.contains(" requests, "))?;
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    nums.try_into().ok()
}

#[test]
fn verify_finds_no_difference_on_any_fixture() {
    for f in fixtures().iter().filter(|f| !f.contains("-error-")) {
        let out = Command::new(BIN)
            .args(["import", "--verify", f])
            .current_dir(fixtures_dir())
            .output()
            .expect("run import --verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{f}:\n{stderr}");
        // stdout is the table, as without --verify.
        let (_, plain, _) = import(f);
        assert_eq!(String::from_utf8_lossy(&out.stdout), plain, "{f}");
        let Some([n, agree, differ, skipped, noted]) = verify_counts(&stderr) else {
            panic!("{f}: no summary line:\n{stderr}");
        };
        assert!(
            stderr.contains(&format!(
                "verify: {n} requests, {agree} agree, 0 differ, {skipped} skipped (not translated), {noted} noted"
            )),
            "{f}:\n{stderr}"
        );
        assert_eq!(differ, 0, "{f}:\n{stderr}");
        assert_eq!(agree + skipped + noted, n, "{f}:\n{stderr}");
        assert!((6..=4000).contains(&n), "{f}: {n} requests");
        assert!(agree * 3 >= n, "{f}: too few requests checked:\n{stderr}");
        assert!(!stderr.contains("verify: differ: "), "{f}:\n{stderr}");
        assert_eq!(
            stderr.matches("verify: noted: ").count(),
            noted,
            "{f}: every noted difference is listed:\n{stderr}"
        );
    }
}
