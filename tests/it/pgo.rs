//! The training run of the profile-guided build (`examples/pgo_train.rs`, run by
//! `scripts/build-pgo.sh`), included here and run against the gateway built for these
//! tests. It checks every answer of every phase (plain, HTTPS and HTTP/2 keep-alive,
//! new connections, uploads, JWT + canary + rate limit) and that the gateway exits
//! cleanly on SIGTERM, in each of its three runs; any failure is its error.

#[path = "../../examples/pgo_train.rs"]
#[allow(dead_code)] // its `main`
mod pgo_train;

use crate::support::BIN;

fn run(args: &[&str]) -> Result<(), pgo_train::Error> {
    pgo_train::run(args.iter().map(|a| a.to_string()))
}

#[test]
fn training_run_passes_against_the_gateway() {
    if let Err(e) = run(&["--gateway", BIN, "--seconds", "0.3"]) {
        panic!("pgo_train: {e}");
    }
}

#[test]
fn training_run_refuses_bad_arguments() {
    for (args, error) in [
        (&["--seconds", "1"][..], "usage: pgo_train --gateway PATH"),
        (&["--gateway", BIN, "--seconds", "0"][..], "--seconds takes"),
        (
            &["--gateway", BIN, "--seconds", "soon"][..],
            "--seconds takes",
        ),
        (
            &["--gateway", BIN, "--fast"][..],
            "unknown argument \"--fast\"",
        ),
        (
            &["--gateway", "/nonexistent/switchyard"][..],
            "cannot start /nonexistent/switchyard",
        ),
    ] {
        match run(args) {
            Ok(()) => panic!("{args:?} should fail"),
            Err(e) => assert!(e.to_string().contains(error), "{args:?}: {e}"),
        }
    }
}
