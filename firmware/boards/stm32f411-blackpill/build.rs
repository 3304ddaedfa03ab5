//! Puts memory.x where cortex-m-rt's link.x finds it and links with link.x
//! (and defmt.x with the `defmt` feature).
//!
//! Done here rather than in .cargo/config.toml, so that a build from
//! anywhere (`cargo build --manifest-path ...` from the repository root, as
//! scripts/test does) links the same way.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rustc-link-arg=-Tlink.x");
    if std::env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
}
