//! Shard groups' Raft logs on RocksDB, with one sync for every append that
//! came in while the previous one ran: the group commit of the journal
//! writer, moved below openraft. Every group's `append` writes its entries
//! unsynced (readable at once, as openraft requires) and hands its flush
//! callback to the disk's syncer thread, which takes every callback that
//! is waiting, syncs the write-ahead log once and answers them all. A vote
//! is synced before `save_vote` returns.
//!
//! Keys start with the group, so one group's log is one key range:
//! `raft_log`: group u32 BE ‖ index u64 BE → the entry (postcard);
//! `raft_meta`: `vote` / `committed` / `purged` ‖ group → postcard.
//! Not yet the node's store: it opens a RocksDB of its own (the next step
//! puts these families beside the node's and the shard workers' writes
//! through them).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ShardRaft;

type C = ShardRaft;

const CF_LOG: &str = "raft_log";
const CF_META: &str = "raft_meta";

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn log_key(group: u32, index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&group.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Above every key of `group`'s log.
fn log_end(group: u32) -> Vec<u8> {
    let mut key = log_key(group, u64::MAX).to_vec();
    key.push(0xff);
    key
}

fn meta_key(what: &[u8], group: u32) -> Vec<u8> {
    let mut key = what.to_vec();
    key.extend_from_slice(&group.to_be_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    postcard::to_allocvec(value).map_err(other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The format of the entries a Raft disk holds (`raft_meta` `format`):
/// 3 since `ShardEntry` carries controller changes (2: webhook cursors). A disk of entries in
/// another format is refused at open rather than misread.
const LOG_FORMAT: u8 = 3;

fn check_format(db: &DB) -> Result<(), io::Error> {
    let meta = db.cf_handle(CF_META).ok_or_else(|| other("no column family raft_meta"))?;
    let log = db.cf_handle(CF_LOG).ok_or_else(|| other("no column family raft_log"))?;
    match db.get_cf(meta, b"format").map_err(other)? {
        Some(v) if v.as_slice() == [LOG_FORMAT] => Ok(()),
        Some(v) => Err(other(format!("Raft log format {v:?}; this build reads {LOG_FORMAT}"))),
        None if db.iterator_cf(log, rocksdb::IteratorMode::Start).next().is_some() => Err(other(format!(
            "a Raft log of an earlier format (before {LOG_FORMAT}): start this node from an empty data dir and \
             replace it into the cluster (docs/CLUSTER.md)"
        ))),
        None => {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(meta, b"format", [LOG_FORMAT], &wo).map_err(other)
        }
    }
}

struct Disk {
    db: DB,
    /// Flush callbacks waiting for the next sync.
    waiting: Mutex<mpsc::Sender<IOFlushed<C>>>,
}

/// A RocksDB holding the Raft logs of many groups, and its syncer.
pub struct RaftDisk {
    disk: Arc<Disk>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

impl RaftDisk {
    pub fn open(path: &Path) -> Result<RaftDisk, io::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOG, CF_META, "default"].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(other)?;
        check_format(&db)?;
        let (tx, rx) = mpsc::channel::<IOFlushed<C>>();
        let disk = Arc::new(Disk { db, waiting: Mutex::new(tx) });
        let syncing = Arc::clone(&disk);
        let syncer = std::thread::Builder::new().name("prepaid-raft-sync".into()).spawn(move || {
            // Ends when the disk is dropped (every sender with it).
            while let Ok(first) = rx.recv() {
                let mut flushed = vec![first];
                flushed.extend(rx.try_iter());
                let synced = syncing.db.flush_wal(true);
                for callback in flushed {
                    callback.io_completed(synced.as_ref().map(|_| ()).map_err(other));
                }
            }
        })?;
        Ok(RaftDisk { disk, syncer: Some(syncer) })
    }

    /// Group `group`'s log on this disk.
    pub fn log(&self, group: u32) -> RocksLog {
        RocksLog { disk: Arc::clone(&self.disk), group }
    }
}

impl Drop for RaftDisk {
    fn drop(&mut self) {
        // The syncer holds the disk until the last log handle lets go of
        // the sender: close it now so the thread ends with this disk.
        if let Ok(mut tx) = self.disk.waiting.lock() {
            *tx = mpsc::channel().0;
        }
        if let Some(thread) = self.syncer.take() {
            let _ = thread.join();
        }
    }
}

/// One group's Raft log. Clones share it (the log reader is one).
#[derive(Clone)]
pub struct RocksLog {
    disk: Arc<Disk>,
    group: u32,
}

impl RocksLog {
    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, io::Error> {
        self.disk.db.cf_handle(name).ok_or_else(|| other(format!("no column family {name}")))
    }

    fn meta<T: DeserializeOwned>(&self, what: &[u8]) -> Result<Option<T>, io::Error> {
        let value = self.disk.db.get_cf(self.cf(CF_META)?, meta_key(what, self.group)).map_err(other)?;
        value.map(|v| decode(&v)).transpose()
    }

    fn put_meta<T: Serialize>(&self, what: &[u8], value: &T, sync: bool) -> Result<(), io::Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.disk.db.put_cf_opt(self.cf(CF_META)?, meta_key(what, self.group), encode(value)?, &wo).map_err(other)
    }
}

/// The controller keeps its map beside its log (`raft_meta` `machine` ‖
/// group), synced on every save.
impl super::control::MachineDisk for RocksLog {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        self.meta::<Vec<u8>>(b"machine")
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        self.put_meta(b"machine", &bytes, true)
    }
}

impl RaftLogReader<C> for RocksLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&i) => Some(i - 1),
            Bound::Unbounded => None,
        };
        let mut out = Vec::new();
        let from = log_key(self.group, start);
        for item in self.disk.db.iterator_cf(self.cf(CF_LOG)?, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item.map_err(other)?;
            if key.len() != 12 || key[..4] != self.group.to_be_bytes() {
                break;
            }
            let index = u64::from_be_bytes(key[4..].try_into().map_err(other)?);
            if end.is_some_and(|end| index > end) {
                break;
            }
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.meta(b"vote")
    }
}

impl RaftLogStorage<C> for RocksLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let purged: Option<LogIdOf<C>> = self.meta(b"purged")?;
        let mut it = self.disk.db.raw_iterator_cf(self.cf(CF_LOG)?);
        it.seek_for_prev(log_key(self.group, u64::MAX));
        let last = match (it.key(), it.value()) {
            (Some(key), Some(value)) if key.len() == 12 && key[..4] == self.group.to_be_bytes() => {
                Some(decode::<EntryOf<C>>(value)?.log_id())
            }
            _ => None,
        };
        it.status().map_err(other)?;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put_meta(b"vote", vote, true)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // Not synced: after a crash openraft learns the commit again from
        // the group (and re-applies from what the state machine holds).
        self.put_meta(b"committed", &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.meta::<Option<LogIdOf<C>>>(b"committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(log, log_key(self.group, entry.index()), encode(&entry)?);
        }
        // Readable now; durable when the syncer answers the callback.
        self.disk.db.write(batch).map_err(other)?;
        let waiting = self.disk.waiting.lock().map_err(other)?;
        if let Err(mpsc::SendError(callback)) = waiting.send(callback) {
            callback.io_completed(Err(other("the raft disk is closed")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last.map_or(0, |id| id.index() + 1);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG)?, log_key(self.group, from).to_vec(), log_end(self.group));
        self.disk.db.write(batch).map_err(other)
    }

    async fn purge(&mut self, upto: LogIdOf<C>) -> Result<(), io::Error> {
        // The purged id and the deletion in one write: no hole is ever seen.
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, meta_key(b"purged", self.group), encode(&upto)?);
        batch.delete_range_cf(self.cf(CF_LOG)?, log_key(self.group, 0), log_key(self.group, upto.index() + 1));
        self.disk.db.write(batch).map_err(other)
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::cluster::ShardEntry;
    use crate::cluster::memory::MemoryShard;
    use crate::cluster::testing::Ledger;

    /// A disk of entries in an earlier format (no `format` mark, entries
    /// present) is refused at open, with a sentence; a new disk is marked.
    #[tokio::test]
    async fn a_raft_disk_of_an_earlier_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let disk = RaftDisk::open(dir.path()).unwrap();
            let entry = EntryOf::<C>::new_blank(openraft::testing::log_id::<C>(1, 0, 1));
            disk.log(0).append([entry], IOFlushed::noop()).await.unwrap();
        }
        assert!(RaftDisk::open(dir.path()).is_ok(), "a disk of this format opens again");
        {
            let db = DB::open_cf_descriptors(
                &Options::default(),
                dir.path(),
                [CF_LOG, CF_META, "default"].map(|n| ColumnFamilyDescriptor::new(n, Options::default())),
            )
            .unwrap();
            db.delete_cf(db.cf_handle(CF_META).unwrap(), b"format").unwrap();
        }
        let refused = RaftDisk::open(dir.path()).err().expect("refused");
        assert!(refused.to_string().contains("a Raft log of an earlier format"), "{refused}");
    }

    struct Fresh;

    impl StoreBuilder<C, RocksLog, MemoryShard, (tempfile::TempDir, RaftDisk)> for Fresh {
        async fn build(&self) -> Result<((tempfile::TempDir, RaftDisk), RocksLog, MemoryShard), StorageError<C>> {
            let dir = tempfile::tempdir().unwrap();
            let disk = RaftDisk::open(dir.path()).unwrap();
            // Another group on the same disk, so every test also checks
            // that groups stay apart.
            let log = disk.log(7);
            let mut neighbour = disk.log(8);
            let entry = EntryOf::<C>::new_blank(openraft::testing::log_id::<C>(1, 0, 3));
            neighbour.append([entry], IOFlushed::noop()).await.unwrap();
            Ok(((dir, disk), log, MemoryShard::default()))
        }
    }

    #[tokio::test]
    async fn the_rocksdb_log_passes_openraft_s_storage_suite() {
        Suite::test_all(Fresh).await.unwrap();
    }

    /// Once an append's callback has fired the entries are on disk: a copy
    /// of the data directory taken right then (a crash) holds them, and the
    /// vote, and nothing of another group.
    #[tokio::test]
    async fn an_append_answered_is_on_disk_and_groups_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let disk = RaftDisk::open(dir.path()).unwrap();
        let mut log = disk.log(1);
        let mut ledger = Ledger::new("acme");
        let entries: Vec<EntryOf<C>> = [ledger.open(), ledger.purchase("p1", 5)]
            .into_iter()
            .enumerate()
            .map(|(i, e): (usize, ShardEntry)| {
                EntryOf::<C>::new_normal(openraft::testing::log_id::<C>(2, 1, i as u64 + 1), e)
            })
            .collect();
        let vote = openraft::impls::Vote::new(2u64, 1u64);
        log.save_vote(&vote).await.unwrap();
        let (tx, rx) = C::oneshot();
        log.append(entries.clone(), IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        // The crash: the files as they are now, the database still open.
        let copy = tempfile::tempdir().unwrap();
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let file = file.unwrap();
            if file.file_name() != "LOCK" {
                std::fs::copy(file.path(), copy.path().join(file.file_name())).unwrap();
            }
        }
        let reopened = RaftDisk::open(copy.path()).unwrap();
        let mut log = reopened.log(1);
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(2));
        let mut other = reopened.log(2);
        assert!(other.try_get_log_entries(..).await.unwrap().is_empty());
        assert_eq!(other.get_log_state().await.unwrap().last_log_id, None);
    }
}
