//! The end-to-end harness finds the binary under test.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn harness_runs_the_built_agent() {
    let out = Command::new(kouan_tests::kouan_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("kouan "));
}
