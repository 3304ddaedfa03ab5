//! The ASTM E1394 record layer against arbitrary message text, in a
//! single-byte code page, UTF-8 and GBK.
//!
//! Run: `cargo +nightly fuzz run astm_records` (from fuzz/).
#![no_main]

use kouan_agent::astm::AstmOptions;
use kouan_agent::astm::records::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let label = ["windows-1252", "utf-8", "gbk"][usize::from(which % 3)];
    let options = AstmOptions {
        encoding: label.into(),
        ..AstmOptions::default()
    };
    let (encoding, _) = options.compile().expect("a known code page");
    let message = Message::parse(text, encoding);
    let results = message.readings();

    // Every reading comes from one result record and keeps its bytes.
    let results_sent = message.records.iter().filter(|r| r.kind == 'R').count();
    assert_eq!(results.readings.len(), results_sent);
    for reading in &results.readings {
        assert_eq!(reading.values.len(), 1);
        assert!(reading.raw.len() <= text.len());
        assert!(
            reading
                .raw
                .first()
                .is_some_and(|b| b.eq_ignore_ascii_case(&b'R'))
        );
    }
});
