//! The barcode scan parser against arbitrary bytes.
//!
//! Run: `cargo +nightly fuzz run scan_parser` (from the repository root).
#![no_main]

use kouan_agent::scan::{self, Content, Date, ScanError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks "today", so the century rule is explored too.
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let today = Date::new(2000 + u16::from(seed % 100), 1 + seed % 12, 1).expect("a valid date");

    let Ok(scan) = scan::parse(bytes, today) else {
        return;
    };
    if let Content::Gs1(elements) = scan.content {
        assert!(!elements.elements.is_empty());
        // The canonical encoding splits the same way; only dropping a GS the
        // scan carried may make a value's tail look like a swallowed AI.
        match scan::parse_element_string(&elements.encode(), today) {
            Ok(again) => assert_eq!(again, elements),
            Err(e) => assert!(matches!(e, ScanError::SwallowedAi { .. }), "{e}"),
        }
    }
});
