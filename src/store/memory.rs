//! The store contract in memory: ordered maps instead of column families.
//! Used by tests; the simulated disk (`sim.rs`) builds on it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Mutex;

use super::{Loaded, Replacement, Store, StoreError, WriteSet};
use crate::ledger::{AccountId, AccountState, Amount, DedupRecord, EventRecord, IdemKey};

#[derive(Clone, Default)]
struct Maps {
    accounts: BTreeMap<AccountId, AccountState>,
    journal: BTreeMap<(AccountId, u64), EventRecord>,
    dedup: BTreeMap<(AccountId, IdemKey), DedupRecord>,
    timers: BTreeSet<(u64, AccountId)>,
    in_flight: BTreeMap<AccountId, (u64, Amount)>,
    /// Webhooks: (last written, last delivered) per account.
    webhooks: BTreeMap<AccountId, (u64, u64)>,
    /// Raft marks by group.
    raft: BTreeMap<u32, Vec<u8>>,
}

#[derive(Default)]
pub struct MemoryStore {
    maps: Mutex<Maps>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A copy of everything stored (the simulated disk keeps its synced
    /// state this way).
    pub fn snapshot(&self) -> MemoryStore {
        MemoryStore { maps: Mutex::new(self.maps().clone()) }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves whole writes only (each write
        // is applied under one lock), so the data is still consistent.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Maps {
    fn write(&mut self, set: &WriteSet) {
        for w in &set.accounts {
            for r in &w.records {
                self.journal.insert((w.id.clone(), r.seq), r.clone());
            }
            self.accounts.insert(w.id.clone(), (*w.snapshot).clone());
            for (k, d) in &w.dedup {
                self.dedup.insert((w.id.clone(), k.clone()), d.clone());
            }
            if let Some(at) = w.timer_before {
                self.timers.remove(&(at, w.id.clone()));
            }
            if let Some(at) = w.timer_after {
                self.timers.insert((at, w.id.clone()));
            }
            match w.in_flight() {
                _ if !w.in_flight_changed => None,
                Some(attempt) => self.in_flight.insert(w.id.clone(), attempt),
                None => self.in_flight.remove(&w.id),
            };
            if set.webhooks
                && let Some(last) = w.records.last()
            {
                self.webhooks.entry(w.id.clone()).or_default().0 = last.seq;
            }
        }
        if let Some((group, mark)) = &set.raft_mark {
            self.raft.insert(*group, mark.clone());
        }
    }
}

impl Store for MemoryStore {
    fn write(&self, set: &WriteSet, _sync: bool) -> Result<(), StoreError> {
        self.maps().write(set);
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn load(&self, id: &AccountId) -> Result<Option<Loaded>, StoreError> {
        let m = self.maps();
        let Some(state) = m.accounts.get(id).cloned() else { return Ok(None) };
        let dedup_max = m
            .dedup
            .range((id.clone(), IdemKey::new("!").expect("valid"))..)
            .take_while(|((a, _), _)| a == id)
            .last()
            .map(|((_, k), _)| k.clone());
        Ok(Some(Loaded { state, dedup_max }))
    }

    fn dedup(&self, id: &AccountId, key: &IdemKey, since_ms: u64) -> Result<Option<DedupRecord>, StoreError> {
        let m = self.maps();
        Ok(m.dedup.get(&(id.clone(), key.clone())).filter(|d| d.at_ms > since_ms).cloned())
    }

    fn history(&self, id: &AccountId, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let m = self.maps();
        Ok(m.journal
            .range((id.clone(), after_seq.saturating_add(1))..)
            .take_while(|((a, _), _)| a == id)
            .take(limit as usize)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn due(&self, until_ms: u64, limit: usize) -> Result<Vec<(u64, AccountId)>, StoreError> {
        let m = self.maps();
        Ok(m.timers.iter().take_while(|(at, _)| *at <= until_ms).take(limit).cloned().collect())
    }

    fn in_flight_recharges(&self) -> Result<Vec<(AccountId, u64, Amount)>, StoreError> {
        let m = self.maps();
        Ok(m.in_flight.iter().map(|(id, (attempt, amount))| (id.clone(), *attempt, *amount)).collect())
    }

    fn webhook_pending(&self) -> Result<Vec<(AccountId, u64, u64)>, StoreError> {
        let m = self.maps();
        Ok(m.webhooks.iter().filter(|(_, (w, d))| w > d).map(|(id, (w, d))| (id.clone(), *w, *d)).collect())
    }

    fn set_webhook_cursor(&self, id: &AccountId, seq: u64) -> Result<(), StoreError> {
        let mut m = self.maps();
        let entry = m.webhooks.entry(id.clone()).or_default();
        entry.1 = entry.1.max(seq);
        Ok(())
    }

    fn webhook_cursor(&self, id: &AccountId) -> Result<u64, StoreError> {
        Ok(self.maps().webhooks.get(id).map_or(0, |(_, delivered)| *delivered))
    }

    fn raft_mark(&self, group: u32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.maps().raft.get(&group).cloned())
    }

    fn accounts_in(&self, shards: Range<u32>, total: u32) -> Result<Vec<AccountId>, StoreError> {
        let in_shards = |id: &AccountId| shards.contains(&(id.shard(u64::from(total)) as u32));
        Ok(self.maps().accounts.keys().filter(|id| in_shards(id)).cloned().collect())
    }

    fn dedup_all(&self, id: &AccountId) -> Result<Vec<(IdemKey, DedupRecord)>, StoreError> {
        let m = self.maps();
        Ok(m.dedup
            .range((id.clone(), IdemKey::new("!").expect("valid"))..)
            .take_while(|((a, _), _)| a == id)
            .map(|((_, k), d)| (k.clone(), d.clone()))
            .collect())
    }

    fn replace_shards(&self, r: Replacement) -> Result<(), StoreError> {
        let Replacement { shards, total, accounts, webhooks, delivered, raft_mark } = r;
        let in_shards = |id: &AccountId| shards.contains(&(id.shard(u64::from(total)) as u32));
        let outside =
            accounts.iter().map(|w| &w.id).chain(delivered.iter().map(|(id, _)| id)).find(|id| !in_shards(id));
        if let Some(id) = outside {
            return Err(StoreError::Corrupt(format!("account {id} is not in shards {shards:?}")));
        }
        let mut m = self.maps();
        m.accounts.retain(|id, _| !in_shards(id));
        m.journal.retain(|(id, _), _| !in_shards(id));
        m.dedup.retain(|(id, _), _| !in_shards(id));
        m.timers.retain(|(_, id)| !in_shards(id));
        m.in_flight.retain(|id, _| !in_shards(id));
        m.webhooks.retain(|id, _| !in_shards(id));
        m.write(&WriteSet { accounts, webhooks, raft_mark: Some(raft_mark) });
        for (id, seq) in delivered {
            m.webhooks.entry(id).or_default().1 = seq;
        }
        Ok(())
    }
}
