//! Bytes for what is stored: postcard, behind a format version.
//!
//! Every stored value starts with one byte naming its format version, then
//! the postcard encoding of a record enum of that version. Postcard is
//! serde-based with a documented, stable wire format (bincode, the other
//! candidate, is unmaintained: its last release is a `compile_error!`).
//! Decoding checks the version first, so a later version can read old bytes
//! by matching on it; bytes of an unknown version are refused, never guessed.

use serde::{Deserialize, Serialize};

use crate::ledger::{AccountId, AccountState, DedupRecord, EventRecord, IdemKey};

/// The format version this build writes. Version 3: the log of per-shard
/// entries, history pages, one key per idempotency record, every key
/// starting with its shard.
pub const FORMAT_VERSION: u8 = 3;

/// Everything the store keeps, one variant per kind of record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stored {
    /// An account's state as of its last durable group.
    Snapshot(Box<AccountState>),
    /// One journal record.
    Event(EventRecord),
    /// The first result of an idempotency key.
    Dedup(IdemKey, DedupRecord),
    /// A page of one account's journal: consecutive records, oldest first.
    History(Vec<EventRecord>),
    /// One shard's log entry for one group: what each account wrote.
    Log(Vec<LogItem>),
}

/// What one group wrote for one account, as the log keeps it: the journal
/// records (the snapshot is their fold, so it is not logged) and the
/// idempotency records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogItem {
    pub id: AccountId,
    pub records: Vec<EventRecord>,
    pub dedup: Vec<(IdemKey, DedupRecord)>,
}

/// `Stored`, borrowed: encodes to the same bytes without cloning (a test
/// pins that the two agree, variant by variant).
#[derive(Serialize)]
pub enum StoredRef<'a> {
    Snapshot(&'a AccountState),
    Event(&'a EventRecord),
    Dedup(&'a IdemKey, &'a DedupRecord),
    History(&'a [EventRecord]),
    Log(&'a [LogItemRef<'a>]),
}

/// `LogItem`, borrowed.
#[derive(Serialize)]
pub struct LogItemRef<'a> {
    pub id: &'a AccountId,
    pub records: &'a [EventRecord],
    pub dedup: &'a [(IdemKey, DedupRecord)],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("stored bytes are empty")]
    Empty,
    #[error("stored bytes have format version {0}; this build reads version {FORMAT_VERSION}")]
    UnknownVersion(u8),
    #[error("stored bytes do not decode: {0}")]
    Corrupt(String),
}

pub fn encode(value: &Stored) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // Encoding into a Vec cannot fail: every type here is plain serde data.
    postcard::to_extend(value, out).expect("postcard encodes plain data into a Vec")
}

/// Encodes into `out` (cleared first), reusing its allocation.
pub fn encode_into(value: &StoredRef<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT_VERSION);
    let buf = std::mem::take(out);
    *out = postcard::to_extend(value, buf).expect("postcard encodes plain data into a Vec");
}

pub fn decode(bytes: &[u8]) -> Result<Stored, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    postcard::from_bytes(body).map_err(|e| CodecError::Corrupt(e.to_string()))
}
