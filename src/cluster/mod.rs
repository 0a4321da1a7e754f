//! The cluster (issue 13; docs: `../shared/DESIGN.md`, "Sharding and the
//! cluster"). Each shard's log becomes a Raft log, replicated by openraft:
//! this module holds the pieces a shard's Raft group is made of, and grows
//! into the router, the node link and the controller group.
//!
//! Here: the type config of a group, the entry it replicates — one
//! group's part of one group commit, as the log already holds it
//! (`codec::LogItem`: each account's journal records and idempotency
//! records, results and not commands, so a follower applies an entry by
//! replaying it and no rule runs twice) — the state machine on the node's
//! store (`apply`), a node's groups (`groups`), the logs (`memory`,
//! `rocks`), the node link (`link`), groups in one process (`local`) and a
//! planned move (`moves`). A node runs clustered when `cluster.node_id` is
//! set (docs/CLUSTER.md).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::LogItem;
use crate::ledger::AccountId;

pub mod apply;
pub mod control;
pub mod groups;
pub mod link;
pub mod local;
pub mod memory;
pub mod moves;
#[cfg(feature = "rocksdb")]
pub mod rocks;

/// One group commit's part for one Raft group: what each account wrote,
/// in order. What a group's Raft log holds for every normal entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The term whose leader computed these writes from its cells. The
    /// entry applies only if it is committed in that term's log position
    /// (its log id carries the same term): a leader that lost the term and
    /// won a later one cannot slip writes made from its old memory into the
    /// new term. `None`: unfenced (openraft's storage suite, tests).
    pub term: Option<u64>,
    pub items: Vec<LogItem>,
    /// Webhook deliveries the leader made: per account, its events up to
    /// this sequence were delivered (`Store::set_webhook_cursor`, never
    /// moved back). Replicated so that a new leader goes on from about
    /// where the last one stopped (at least once). Never fenced.
    pub cursors: Vec<(AccountId, u64)>,
    /// The controller group's entries only (`control::CONTROL`): a change
    /// of the shard map. `None` in every shard group's entry.
    pub control: Option<control::Change>,
}

/// What applying a normal entry did, as the proposer learns it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Every account's records were applied.
    #[default]
    Yes,
    /// Nothing was applied: the entry was proposed for another term, or an
    /// account's records do not continue its state (they were computed
    /// from memory that missed an entry). Every member decides alike.
    Fenced,
}

impl fmt::Display for ShardEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard entry of {} accounts", self.items.len())
    }
}

openraft::declare_raft_types!(
    /// A shard's Raft group. One leader per term (`leader_id_std`: the term
    /// alone is the committed leader id in every stored log id), so "at most
    /// one leader per shard per term" is the protocol's own rule. Fixed for
    /// a data dir once written: every stored entry carries it.
    pub ShardRaft:
        D = ShardEntry,
        R = Applied,
        LeaderId = openraft::impls::leader_id_std::LeaderId<Self::Term, Self::NodeId>,
);

/// Shard entries made by the ledger itself, for the cluster's tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use super::ShardEntry;
    use super::local::LocalRaft;
    use super::memory::MemoryShard;
    use crate::codec::LogItem;
    use crate::ledger::{Account, AccountId, Amount, Command, Currency, IdemKey, LedgerConfig, Mode, Request};

    /// A node's link server on a loopback port of its own; its tasks, to
    /// abort when the node dies (aborting them also closes the connections
    /// it holds, as a dead process's would be: a node restarted on the
    /// same address is then reached anew, not its predecessor's service).
    pub async fn serve<SM>(
        service: Arc<super::link::LinkService<SM>>,
    ) -> (std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)
    where
        SM: openraft::storage::RaftStateMachine<super::ShardRaft, SnapshotData = std::io::Cursor<Vec<u8>>>,
    {
        serve_at(service, "127.0.0.1:0").await
    }

    /// `serve` on a given address (a node restarting where it was).
    pub async fn serve_at<SM>(
        service: Arc<super::link::LinkService<SM>>,
        addr: &str,
    ) -> (std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)
    where
        SM: openraft::storage::RaftStateMachine<super::ShardRaft, SnapshotData = std::io::Cursor<Vec<u8>>>,
    {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<tokio::net::TcpStream, std::io::Error>>(16);
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                if tx.send(Ok(conn)).await.is_err() {
                    break;
                }
            }
        });
        // Aborting the server's task would leave its connections served:
        // the task that holds `stop` is aborted instead, and the server
        // shuts down gracefully, closing them.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(super::link::pb::node_link_server::NodeLinkServer::new(service))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), async move {
                    let _ = stopped.await;
                })
                .await;
        });
        let holder = tokio::spawn(async move {
            let _stop = stop;
            std::future::pending::<()>().await
        });
        (addr, vec![accept, holder])
    }

    /// A group's members by node id, each with its state machine.
    pub type Members = BTreeMap<u64, (LocalRaft, MemoryShard)>;

    /// Raft timing for tests: elections at 3 to 6 heartbeats.
    pub fn config(heartbeat_ms: u64) -> Arc<openraft::Config> {
        let config = openraft::Config {
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: heartbeat_ms * 3,
            election_timeout_max: heartbeat_ms * 6,
            ..Default::default()
        };
        Arc::new(config.validate().unwrap())
    }

    /// The leader all of `among` agree on, once they do (bounded).
    pub async fn agreed_leader(members: &Members, among: &[u64]) -> u64 {
        for _ in 0..400 {
            let mut seen = BTreeSet::new();
            for id in among {
                seen.insert(members[id].0.current_leader().await);
            }
            if let [Some(l)] = seen.into_iter().collect::<Vec<_>>()[..]
                && among.contains(&l)
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader agreed among {among:?}");
    }

    /// The ledger's account balance as a member's state holds it.
    pub fn balance(shard: &MemoryShard, ledger: &Ledger) -> Amount {
        shard.state().accounts.get(&ledger.id).map_or(Amount::ZERO, |(state, _)| state.balance())
    }

    /// One account driven through the ledger; each request's records and
    /// idempotency records are one entry.
    pub struct Ledger {
        pub id: AccountId,
        pub account: Account,
        cfg: LedgerConfig,
        n: u64,
    }

    impl Ledger {
        pub fn new(id: &str) -> Ledger {
            Ledger { id: AccountId::new(id).unwrap(), account: Account::default(), cfg: LedgerConfig::default(), n: 0 }
        }

        fn entry(&mut self, key: Option<&str>, command: Command) -> ShardEntry {
            self.n += 1;
            let req = Request { account: self.id.clone(), key: key.map(|k| IdemKey::new(k).unwrap()), command };
            let outcome = self.account.execute(&req, 1_800_000_000_000 + self.n, &self.cfg);
            assert!(outcome.result.is_ok(), "{:?}", outcome.result);
            let dedup =
                outcome.recorded.iter().map(|k| (k.clone(), self.account.dedup.get(k).unwrap().clone())).collect();
            let item = LogItem { id: self.id.clone(), records: outcome.records, dedup };
            ShardEntry { term: None, items: vec![item], ..ShardEntry::default() }
        }

        pub fn open(&mut self) -> ShardEntry {
            let command = Command::Open {
                mode: Mode::Prepaid,
                currency: Currency::USD,
                past_due_suspends: None,
                credit_limit: None,
            };
            self.entry(None, command)
        }

        pub fn purchase(&mut self, key: &str, dollars: i64) -> ShardEntry {
            self.entry(Some(key), Command::Purchase { amount: Amount::whole(dollars), reference: None })
        }
    }
}
