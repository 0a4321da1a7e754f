//! Bytes off the wire → a decoded `Batch` → validated ledger requests.
//! Never panics; every accepted request passes the ledger's own validation
//! or is refused with a code; conversion is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepaid::ledger::{LedgerConfig, decide};
use prepaid::wire::{self, pb};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = pb::Batch::decode(data) else { return };
    let cfg = LedgerConfig::default();
    for req in &batch.requests {
        match wire::request(req) {
            Ok(r) => {
                assert_eq!(wire::request(req).ok(), Some(r.clone()), "conversion is deterministic");
                // Validation answers, never panics; a refusal has a code.
                if let Err(reason) = decide::validate(&r, &cfg) {
                    assert!(!reason.code().is_empty());
                }
                let _ = r.command.fingerprint();
            }
            Err(e) => assert!(!e.code().is_empty() && !e.to_string().is_empty()),
        }
    }
    // Re-encoding what was decoded decodes to the same message.
    let again = pb::Batch::decode(batch.encode_to_vec().as_slice()).expect("round trip");
    assert_eq!(again, batch);
});
