//! The read side a billing page needs (issue 14), read from the node's
//! store as `history` is: an account's statement over a time range (usage
//! by service, and its balance at evenly spaced instants for a chart), its
//! open holds, grants and unpaid invoices, and the accounts the node holds,
//! found by id prefix and status. Every list is bounded and paged.
//!
//! The store holds what was acknowledged (`sync`: everything answered);
//! deadlines that passed and were not yet settled (a hold past its expiry
//! before the next request or tick) show as they stand. Clustered, a node
//! answers for the groups it holds a member of (its copy may be a few
//! entries behind the leader's, as `history`'s) and refuses the others
//! `wrong_node`.

use serde::{Deserialize, Serialize};

use super::Node;
use crate::error::Error;
use crate::ledger::state::{Grant, Hold, Invoice};
use crate::ledger::{AccountId, Amount, Service, Status, UsageSummary};

/// The most instants a statement's balance series has.
pub const SERIES_POINTS_MAX: u32 = 1_000;
/// The longest account id prefix a search takes (an id is at most this).
pub const PREFIX_MAX: usize = 128;

/// An account's statement over `[from_ms, to_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Usage by service in the range, as a statement shows it.
    pub usage: UsageSummary,
    /// The balance at `points` instants evenly spaced from `from_ms` to
    /// `to_ms` (the last one just before `to_ms`): the balance after the
    /// last event at or before each (zero before the account opened).
    pub series: Vec<(u64, Amount)>,
    /// Journal records read to make it.
    pub records_read: u64,
}

/// Which of an account's open items to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    Holds,
    Grants,
    Invoices,
}

impl ItemKind {
    pub fn parse(s: &str) -> Result<ItemKind, Error> {
        match s {
            "holds" => Ok(ItemKind::Holds),
            "grants" => Ok(ItemKind::Grants),
            "invoices" => Ok(ItemKind::Invoices),
            _ => Err(Error::InvalidRequest(format!("{s:?} is not holds, grants or invoices"))),
        }
    }
}

/// A page of an account's open holds, grants with credit left, or unpaid
/// invoices, by id; one kind filled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items {
    pub holds: Vec<Hold>,
    pub grants: Vec<Grant>,
    pub invoices: Vec<Invoice>,
    /// The id to ask after for the next page (`None`: this is the last).
    pub next_after: Option<u64>,
}

/// One account in a list: its id, status and balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLine {
    pub account: AccountId,
    pub status: Status,
    pub balance: Amount,
    pub lifetime_purchased: Amount,
}

/// A page of accounts, in id order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPage {
    pub accounts: Vec<AccountLine>,
    /// The id to ask after for the next page (`None`: this is the last).
    pub next_after: Option<AccountId>,
}

fn storage(e: crate::store::StoreError) -> Error {
    Error::StorageUnavailable(e.to_string())
}

impl Node {
    /// Refuses a read of `id` on a clustered node that holds no member of
    /// its group.
    fn readable_here(&self, id: &AccountId) -> Result<(), Error> {
        if let Some(groups) = &self.inner.groups {
            let group = groups.group_of(id);
            if !groups.holds(group) {
                return Err(groups.elsewhere(id, groups.leader_of(group)));
            }
        }
        Ok(())
    }

    /// The page limit every list takes: 1..=`ledger.history_page_max`.
    fn check_limit(&self, limit: u32) -> Result<(), Error> {
        crate::ledger::decide::check_page(limit, &self.inner.shared.cfg.ledger)?;
        Ok(())
    }

    /// `id`'s statement over `[from_ms, to_ms)`: usage by service, and the
    /// balance at `points` (1..=`SERIES_POINTS_MAX`) instants. Reads the
    /// account's journal from its start up to `to_ms`, at most
    /// `node.statement_records_max` records (a longer one is refused:
    /// narrow the range).
    pub fn statement(&self, id: &AccountId, from_ms: u64, to_ms: u64, points: u32) -> Result<Statement, Error> {
        if from_ms >= to_ms {
            return Err(Error::InvalidRequest(format!("from_ms ({from_ms}) must be before to_ms ({to_ms})")));
        }
        if points == 0 || points > SERIES_POINTS_MAX {
            return Err(Error::InvalidRequest(format!("points is 1 to {SERIES_POINTS_MAX}, not {points}")));
        }
        self.readable_here(id)?;
        let cfg = &self.inner.shared.cfg;
        let max = cfg.node.statement_records_max;
        let page = cfg.ledger.history_page_max;
        let span = to_ms - from_ms;
        let at = |i: u64| from_ms + (u128::from(span) * u128::from(i) / u128::from(points)) as u64;
        let mut series: Vec<(u64, Amount)> = Vec::with_capacity(points as usize);
        let mut sums = [Amount::ZERO; Service::ALL.len()];
        let (mut balance, mut after, mut read) = (Amount::ZERO, 0u64, 0u64);
        'pages: loop {
            let records = self.inner.shared.store.history(id, after, page).map_err(storage)?;
            for record in &records {
                if record.at_ms >= to_ms {
                    break 'pages;
                }
                read += 1;
                if read > max {
                    return Err(Error::InvalidRequest(format!(
                        "the account has more than {max} records before to_ms (node.statement_records_max); narrow \
                         the range"
                    )));
                }
                // Every instant before this record sees the balance before it.
                while series.len() < points as usize && at(series.len() as u64) < record.at_ms {
                    series.push((at(series.len() as u64), balance));
                }
                balance = record.balance_after;
                if record.at_ms >= from_ms
                    && let Some((service, amount)) = record.event.usage()
                {
                    sums[service as usize] += amount;
                }
                after = record.seq;
            }
            if records.len() < page as usize {
                break;
            }
        }
        while series.len() < points as usize {
            series.push((at(series.len() as u64), balance));
        }
        let usage = UsageSummary {
            by_service: Service::ALL.iter().copied().zip(sums).filter(|(_, a)| !a.is_zero()).collect(),
            total: sums.into_iter().sum(),
        };
        Ok(Statement { from_ms, to_ms, usage, series, records_read: read })
    }

    /// A page of `id`'s open holds, grants with credit left, or unpaid
    /// invoices (`kind`), by id: those after id `after`, at most `limit`
    /// (1..=`ledger.history_page_max`).
    pub fn items(&self, id: &AccountId, kind: ItemKind, after: u64, limit: u32) -> Result<Items, Error> {
        self.check_limit(limit)?;
        self.readable_here(id)?;
        let loaded = self.inner.shared.store.load(id).map_err(storage)?;
        let Some(loaded) = loaded else {
            return Err(Error::Refused(crate::ledger::Reason::UnknownAccount));
        };
        let state = loaded.state;
        fn page<T: Clone>(mut all: Vec<T>, id: impl Fn(&T) -> u64, after: u64, limit: u32) -> (Vec<T>, Option<u64>) {
            all.sort_by_key(&id);
            let rest: Vec<T> = all.into_iter().filter(|t| id(t) > after).collect();
            let more = rest.len() > limit as usize;
            let page: Vec<T> = rest.into_iter().take(limit as usize).collect();
            let next = if more { page.last().map(&id) } else { None };
            (page, next)
        }
        let mut items = Items::default();
        match kind {
            ItemKind::Holds => (items.holds, items.next_after) = page(state.holds, |h| h.id, after, limit),
            ItemKind::Grants => (items.grants, items.next_after) = page(state.grants, |g| g.id, after, limit),
            ItemKind::Invoices => (items.invoices, items.next_after) = page(state.invoices, |i| i.id, after, limit),
        }
        Ok(items)
    }

    /// A page of the accounts this node holds whose id starts with
    /// `prefix` (at most `PREFIX_MAX` bytes; empty: all) and, if given,
    /// whose status is `status`: those after `after` in id order, at most
    /// `limit` (1..=`ledger.history_page_max`). Reads at most
    /// `node.statement_records_max` accounts' states for one page (a status
    /// few accounts have, over many accounts, is answered in several
    /// pages, some of them short).
    pub fn accounts(
        &self,
        prefix: &str,
        status: Option<Status>,
        after: Option<&AccountId>,
        limit: u32,
    ) -> Result<AccountPage, Error> {
        self.check_limit(limit)?;
        if prefix.len() > PREFIX_MAX {
            return Err(Error::InvalidRequest(format!("the prefix is at most {PREFIX_MAX} bytes")));
        }
        let mut ids = self.inner.shared.store.all_accounts().map_err(storage)?;
        ids.retain(|id| id.as_str().starts_with(prefix) && after.is_none_or(|a| id > a));
        if let Some(groups) = &self.inner.groups {
            ids.retain(|id| groups.holds(groups.group_of(id)));
        }
        ids.sort();
        let budget = self.inner.shared.cfg.node.statement_records_max;
        let (mut out, mut next_after, mut loaded) = (Vec::new(), None, 0u64);
        let mut last_read: Option<AccountId> = None;
        for id in ids {
            if out.len() == limit as usize || loaded >= budget {
                // More to look at: the next page starts after the last read.
                next_after = last_read;
                break;
            }
            loaded += 1;
            last_read = Some(id.clone());
            let Some(l) = self.inner.shared.store.load(&id).map_err(storage)? else { continue };
            let line = AccountLine {
                account: id,
                status: l.state.status(),
                balance: l.state.balance(),
                lifetime_purchased: l.state.lifetime_purchased,
            };
            if status.is_none_or(|s| s == line.status) {
                out.push(line);
            }
        }
        Ok(AccountPage { accounts: out, next_after })
    }
}
