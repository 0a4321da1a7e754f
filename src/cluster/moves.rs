//! A planned move of one member of a shard group to another node, the way
//! the controller's mover runs it (issue 13): the target joins as a
//! learner and catches up from the leader; it becomes a voter beside the
//! member it replaces (one joint change, the quorum never smaller than
//! before); if the member that leaves is the leader, leadership goes to the
//! target first; then the member that leaves is dropped. Requests go on
//! throughout: a write refused for a moment by a member that is no longer
//! leader is sent again to the one that is.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, Raft};

use super::ShardRaft;

type C = ShardRaft;

/// How long a step waits for the group to get there before the move is
/// given up (with the group as it is: every step is a committed change).
const STEP: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

/// The group's leader, found from any member (`member` is a node id the
/// caller has a handle for, `handle` gives a handle by node id).
async fn leader<SM, F>(handle: &F, member: u64) -> Result<(u64, Raft<C, SM>), String>
where
    SM: RaftStateMachine<C>,
    F: Fn(u64) -> Option<Raft<C, SM>>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < STEP {
        if let Some(raft) = handle(member)
            && let Some(id) = raft.current_leader().await
            && let Some(leader) = handle(id)
            && leader.current_leader().await == Some(id)
        {
            return Ok((id, leader));
        }
        tokio::time::sleep(POLL).await;
    }
    Err(format!("no leader known to node {member} within {STEP:?}"))
}

/// `call` on the group's leader; again on whoever leads if that one no
/// longer does (a change to the same membership twice is one change).
async fn on_leader<SM, F, T, Fut>(
    handle: &F,
    member: u64,
    what: &str,
    call: impl Fn(Raft<C, SM>) -> Fut,
) -> Result<T, String>
where
    SM: RaftStateMachine<C>,
    F: Fn(u64) -> Option<Raft<C, SM>>,
    Fut: Future<Output = Result<T, RaftError<C, ClientWriteError<C>>>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let (_, raft) = leader(handle, member).await?;
        match call(raft).await {
            Ok(done) => return Ok(done),
            Err(e) if e.forward_to_leader().is_some() && start.elapsed() < STEP => tokio::time::sleep(POLL).await,
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
}

/// Moves the group's member on node `from` to node `to` (reachable at
/// `to_node`). `handle` gives the group's member on a node by its id.
pub async fn move_member<SM, F>(handle: F, from: u64, to: u64, to_node: BasicNode) -> Result<(), String>
where
    SM: RaftStateMachine<C>,
    F: Fn(u64) -> Option<Raft<C, SM>>,
{
    let (_, leader_raft) = leader(&handle, from).await?;
    let metrics = leader_raft.wait(Some(STEP)).metrics(|_| true, "membership").await.map_err(|e| e.to_string())?;
    let voters: BTreeSet<u64> = metrics.membership_config.voter_ids().collect();
    if !voters.contains(&from) {
        return Err(format!("node {from} is not a voter of the group ({voters:?})"));
    }
    if voters.contains(&to) {
        return Err(format!("node {to} is already a voter of the group"));
    }
    // 1. The target catches up as a learner (blocking: until it has).
    let adding = format!("adding node {to} as a learner");
    on_leader(&handle, from, &adding, |raft| {
        let node = to_node.clone();
        async move { raft.add_learner(to, node, true).await }
    })
    .await?;
    // 2. It votes beside the member it replaces.
    let mut joined = voters.clone();
    joined.insert(to);
    on_leader(&handle, from, &format!("adding node {to}"), |raft| {
        let members = joined.clone();
        async move { raft.change_membership(members, false).await }
    })
    .await?;
    // 3. Leadership leaves the member that leaves (asked again until it
    // has: a leader may change on its own meanwhile).
    let start = tokio::time::Instant::now();
    loop {
        let (id, raft) = leader(&handle, from).await?;
        if id != from {
            break;
        }
        if start.elapsed() >= STEP {
            return Err(format!("leadership did not leave node {from} within {STEP:?}"));
        }
        raft.trigger().transfer_leader(to).await.map_err(|e| e.to_string())?;
        tokio::time::sleep(POLL * 5).await;
    }
    // 4. The member that leaves is dropped, by whoever leads now.
    let mut left = joined;
    left.remove(&from);
    on_leader(&handle, to, &format!("removing node {from}"), |raft| {
        let members = left.clone();
        async move { raft.change_membership(members, false).await }
    })
    .await?;
    Ok(())
}
