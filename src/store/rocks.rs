//! The store on RocksDB: one database per node, a column family per kind of
//! record, every value in the versioned codec (`crate::codec`).
//!
//! Key layout (ids never contain a zero byte, so `id 0x00 …` is unambiguous
//! and a prefix scan of `id 0x00` reads exactly one account):
//!
//! | column family | key | value |
//! |---|---|---|
//! | `accounts` | id | snapshot (`Stored::Snapshot`) |
//! | `journal` | id 0x00 seq(u64 BE) | one record (`Stored::Event`) |
//! | `dedup` | id 0x00 idempotency key | first result (`Stored::Dedup`) |
//! | `timers` | deadline(u64 BE) id | empty |
//! | `inflight` | id | attempt id (u64 BE), amount (i128 BE) |
//! | `webhooks` | `p` id | last sequence written (u64 BE), when webhooks are on |
//! | `webhooks` | `c` id | last sequence delivered to webhooks (u64 BE) |
//! | `meta` | `format` | the format version byte |
//! | `meta` | `probe` | written by recovery probes after a storage failure |

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use super::{Loaded, Store, StoreError, WriteSet};
use crate::codec::{self, FORMAT_VERSION, Stored};
use crate::ledger::{AccountId, Amount, EventRecord};

const CF_ACCOUNTS: &str = "accounts";
const CF_JOURNAL: &str = "journal";
const CF_DEDUP: &str = "dedup";
const CF_TIMERS: &str = "timers";
const CF_INFLIGHT: &str = "inflight";
const CF_META: &str = "meta";
const CF_WEBHOOKS: &str = "webhooks";
const ALL_CFS: [&str; 7] = [CF_ACCOUNTS, CF_JOURNAL, CF_DEDUP, CF_TIMERS, CF_INFLIGHT, CF_META, CF_WEBHOOKS];

fn webhook_key(kind: u8, id: &AccountId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.as_str().len());
    key.push(kind);
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| corrupt("a webhook mark is not 8 bytes"))?))
}

pub struct RocksStore {
    db: DB,
}

fn io(e: rocksdb::Error) -> StoreError {
    StoreError::Io(e.into_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn account_prefix(id: &AccountId) -> Vec<u8> {
    let mut key = Vec::with_capacity(id.as_str().len() + 1 + 8);
    key.extend_from_slice(id.as_str().as_bytes());
    key.push(0);
    key
}

fn journal_key(id: &AccountId, seq: u64) -> Vec<u8> {
    let mut key = account_prefix(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn timer_key(at_ms: u64, id: &AccountId) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.as_str().len());
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn account_id(bytes: &[u8]) -> Result<AccountId, StoreError> {
    let text = std::str::from_utf8(bytes).map_err(corrupt)?;
    AccountId::new(text).map_err(|_| corrupt(format!("bad account id in a key: {text:?}")))
}

impl RocksStore {
    /// Opens (creating if missing) the database under `path`, with
    /// RocksDB's default 64 MiB memtables.
    pub fn open(path: &Path) -> Result<RocksStore, StoreError> {
        RocksStore::open_with(path, 64)
    }

    /// Opens with memtables of `memtable_mb` MiB per column family. After a
    /// full disk RocksDB resumes writing by itself once that much space is
    /// free (its SstFileManager checks every 5 s); `recover` then succeeds.
    pub fn open_with(path: &Path, memtable_mb: u32) -> Result<RocksStore, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        let write_buffer = memtable_mb as usize * 1024 * 1024;
        opts.set_write_buffer_size(write_buffer);
        // The unused `default` family too: left out, the binding would open
        // it with RocksDB's default 64 MiB.
        let cfs = ALL_CFS.iter().chain(&["default"]).map(|name| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(write_buffer);
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(io)?;
        let store = RocksStore { db };
        let meta = store.cf(CF_META)?;
        match store.db.get_cf(meta, b"format").map_err(io)? {
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                store.db.put_cf_opt(meta, b"format", [FORMAT_VERSION], &wo).map_err(io)?;
            }
            Some(v) if v.as_slice() == [FORMAT_VERSION] => {}
            Some(v) => return Err(corrupt(format!("data format {v:?}; this build reads {FORMAT_VERSION}"))),
        }
        Ok(store)
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| corrupt(format!("column family {name} is missing")))
    }
}

impl Store for RocksStore {
    fn write(&self, set: &WriteSet, sync: bool) -> Result<(), StoreError> {
        let (accounts, journal, dedup, timers, inflight) = (
            self.cf(CF_ACCOUNTS)?,
            self.cf(CF_JOURNAL)?,
            self.cf(CF_DEDUP)?,
            self.cf(CF_TIMERS)?,
            self.cf(CF_INFLIGHT)?,
        );
        let mut batch = WriteBatch::default();
        for w in &set.accounts {
            for r in &w.records {
                batch.put_cf(journal, journal_key(&w.id, r.seq), codec::encode(&Stored::Event(r.clone())));
            }
            batch.put_cf(accounts, w.id.as_str(), codec::encode(&Stored::Snapshot(w.snapshot.clone())));
            for k in &w.dedup_expired {
                let mut key = account_prefix(&w.id);
                key.extend_from_slice(k.as_str().as_bytes());
                batch.delete_cf(dedup, key);
            }
            for (k, d) in &w.dedup {
                let mut key = account_prefix(&w.id);
                key.extend_from_slice(k.as_str().as_bytes());
                batch.put_cf(dedup, key, codec::encode(&Stored::Dedup(k.clone(), d.clone())));
            }
            if w.timer_before != w.timer_after {
                if let Some(at) = w.timer_before {
                    batch.delete_cf(timers, timer_key(at, &w.id));
                }
                if let Some(at) = w.timer_after {
                    batch.put_cf(timers, timer_key(at, &w.id), []);
                }
            }
            match w.in_flight() {
                _ if !w.in_flight_changed => {}
                Some((attempt, amount)) => {
                    let mut value = attempt.to_be_bytes().to_vec();
                    value.extend_from_slice(&amount.units().to_be_bytes());
                    batch.put_cf(inflight, w.id.as_str(), value);
                }
                None => batch.delete_cf(inflight, w.id.as_str()),
            }
            if set.webhooks
                && let Some(last) = w.records.last()
            {
                batch.put_cf(self.cf(CF_WEBHOOKS)?, webhook_key(b'p', &w.id), last.seq.to_be_bytes());
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo).map_err(io)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(io)
    }

    /// A synced write to `meta`: RocksDB refuses writes after an I/O error
    /// until its own recovery clears the error (for a full disk, once space
    /// returns), so a probe that lands means writing works again.
    fn recover(&self) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_META)?, b"probe", [1u8], &wo).map_err(io)
    }

    fn flush(&self) -> Result<(), StoreError> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)?).map_err(io)?;
        }
        Ok(())
    }

    fn load(&self, id: &AccountId, dedup_since_ms: u64) -> Result<Option<Loaded>, StoreError> {
        let Some(bytes) = self.db.get_cf(self.cf(CF_ACCOUNTS)?, id.as_str()).map_err(io)? else {
            return Ok(None);
        };
        let Stored::Snapshot(state) = codec::decode(&bytes).map_err(corrupt)? else {
            return Err(corrupt(format!("account {id} does not hold a snapshot")));
        };
        if &state.id != id {
            return Err(corrupt(format!("account {id} holds the snapshot of {}", state.id)));
        }
        state.check_invariants().map_err(|e| corrupt(format!("account {id}: {e}")))?;
        let prefix = account_prefix(id);
        let mut dedup = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_DEDUP)?, IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) = item.map_err(io)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let Stored::Dedup(k, record) = codec::decode(&value).map_err(corrupt)? else {
                return Err(corrupt(format!("account {id}: a dedup key holds something else")));
            };
            if record.at_ms >= dedup_since_ms {
                dedup.push((k, record));
            }
        }
        dedup.sort_by_key(|(_, d)| d.at_ms);
        Ok(Some(Loaded { state: *state, dedup }))
    }

    fn history(&self, id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let prefix = account_prefix(id);
        let start = journal_key(id, after_seq.saturating_add(1));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_JOURNAL)?, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(io)?;
            if !key.starts_with(&prefix) || out.len() >= limit as usize {
                break;
            }
            match codec::decode(&value).map_err(corrupt)? {
                Stored::Event(record) => out.push(record),
                _ => return Err(corrupt(format!("account {id}: a journal key holds something else"))),
            }
        }
        Ok(out)
    }

    fn due(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, AccountId)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TIMERS)?, IteratorMode::Start) {
            let (key, _) = item.map_err(io)?;
            if key.len() < 8 {
                return Err(corrupt("a timer key is shorter than its deadline"));
            }
            let at = u64::from_be_bytes(key[..8].try_into().map_err(corrupt)?);
            if at > until_ms || out.len() >= limit {
                break;
            }
            out.push((at, account_id(&key[8..])?));
        }
        Ok(out)
    }

    fn in_flight_recharges(&self) -> Result<Vec<(AccountId, u64, Amount)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_INFLIGHT)?, IteratorMode::Start) {
            let (key, value) = item.map_err(io)?;
            if value.len() != 24 {
                return Err(corrupt("an in-flight recharge value is not 24 bytes"));
            }
            let attempt = u64::from_be_bytes(value[..8].try_into().map_err(corrupt)?);
            let units = i128::from_be_bytes(value[8..].try_into().map_err(corrupt)?);
            out.push((account_id(&key)?, attempt, Amount::from_units(units)));
        }
        Ok(out)
    }

    fn webhook_pending(&self) -> Result<Vec<(AccountId, u64, u64)>, StoreError> {
        let cf = self.cf(CF_WEBHOOKS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(b"p", Direction::Forward)) {
            let (key, value) = item.map_err(io)?;
            if key.first() != Some(&b'p') {
                break;
            }
            let id = account_id(&key[1..])?;
            let written = be_u64(&value)?;
            let delivered = match self.db.get_cf(cf, webhook_key(b'c', &id)).map_err(io)? {
                Some(v) => be_u64(&v)?,
                None => 0,
            };
            if written > delivered {
                out.push((id, written, delivered));
            }
        }
        Ok(out)
    }

    fn set_webhook_cursor(&self, id: &AccountId, seq: u64) -> Result<(), StoreError> {
        self.db.put_cf(self.cf(CF_WEBHOOKS)?, webhook_key(b'c', id), seq.to_be_bytes()).map_err(io)
    }

    fn webhook_cursor(&self, id: &AccountId) -> Result<u64, StoreError> {
        match self.db.get_cf(self.cf(CF_WEBHOOKS)?, webhook_key(b'c', id)).map_err(io)? {
            Some(v) => be_u64(&v),
            None => Ok(0),
        }
    }
}
