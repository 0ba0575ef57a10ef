//! Whatever a Kafka record's value or a stream entry's fields hold, the worker's decoding
//! answers an event or an error, never a panic; and what decodes encodes back to itself.
#![no_main]

use std::collections::HashMap;

use coupon_core::event::IssueEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = IssueEvent::decode(data) {
        let again = IssueEvent::decode(&event.encode()).expect("an encoded event decodes");
        assert_eq!(again, event);
    }
    // The same bytes as a stream entry: field-value pairs, one per line, `name=value`.
    let fields: HashMap<String, String> = String::from_utf8_lossy(data)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    if let Ok(event) = IssueEvent::from_stream_fields(&fields) {
        let written: HashMap<String, String> = event
            .stream_fields()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        let again = IssueEvent::from_stream_fields(&written).expect("written fields decode");
        assert_eq!(again, event);
    }
});
