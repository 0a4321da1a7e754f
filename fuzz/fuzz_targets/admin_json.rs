//! Admin API bodies: arbitrary bytes as JSON ledger requests. Never panics;
//! whatever parses serializes back to JSON that parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepaid::ledger::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let items = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    for item in items {
        if let Ok(req) = serde_json::from_value::<Request>(item) {
            let text = serde_json::to_string(&req).expect("a request serializes");
            let back: Request = serde_json::from_str(&text).expect("and parses back");
            assert_eq!(back, req);
        }
    }
});
