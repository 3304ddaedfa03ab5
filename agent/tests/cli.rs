//! The command line as a user meets it.

// A panic is how a test fails; helpers here unwrap like the tests do.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn kouan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kouan"))
}

#[test]
fn version_names_the_program_and_crate_version() {
    let out = kouan().arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("kouan {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_agent() {
    let out = kouan().arg("--help").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("Usage: kouan"), "{stdout}");
    assert!(stdout.contains("signs every reading"), "{stdout}");
}

#[test]
fn unknown_option_fails_with_usage() {
    let out = kouan().arg("--no-such-option").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--no-such-option"), "{stderr}");
}

#[test]
fn invalid_log_filter_is_named() {
    let out = kouan().args(["--log", "kouan=loud"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("invalid log filter \"kouan=loud\" from --log"),
        "{stderr}"
    );
}
