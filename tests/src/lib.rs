//! Helpers for kouan's end-to-end tests.
//!
//! The tests in `tests/tests/` run the real `kouan` binary, built by the
//! same `cargo test --workspace` run (the agent's own integration tests make
//! cargo build it), against real peers. A test that cannot find what it
//! needs fails and names the command that provides it.

use std::path::PathBuf;

/// The `kouan` binary of this build profile.
///
/// Panics with the command to run when it is missing, because running the
/// end-to-end tests without the binary would test nothing.
pub fn kouan_bin() -> PathBuf {
    // Test executables live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("kouan{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p kouan-agent`) first",
        bin.display()
    );
    bin
}
