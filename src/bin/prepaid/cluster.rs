//! `prepaid cluster …`: a clustered node's admin API from the command line
//! (`/admin/v1/cluster…` over HTTP, with an admin token).

use clap::{Args, Subcommand};
use prepaid::httpc::{Outbound, Target};
use serde_json::Value;

use crate::Failure;

/// `prepaid cluster <what>`: which node's admin API, and what to do.
#[derive(Args)]
pub struct ClusterArgs {
    /// The node's HTTP admin address
    #[arg(long, global = true, value_name = "URL", env = "PREPAID_HTTP", default_value = "http://127.0.0.1:7071")]
    http: String,
    /// An admin token
    #[arg(long, global = true, env = "PREPAID_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
    #[command(subcommand)]
    op: ClusterOp,
}

#[derive(Subcommand)]
enum ClusterOp {
    /// Make a new cluster of the node's `cluster.members` (once, on one
    /// node, every node started)
    Init,
    /// Each shard group's leader, term and progress as this node sees them
    /// (JSON)
    Status,
    /// Give node FROM's place in every group to node TO (started with an
    /// empty data dir and its own id): it catches up, then takes the vote
    Replace {
        /// The node id to replace
        #[arg(long, value_name = "ID")]
        from: u64,
        /// The node id that takes its place
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
        /// The new node's gRPC address
        #[arg(long, value_name = "HOST:PORT")]
        to_addr: String,
    },
    /// Bring node ID (started with an empty data dir, its own id and
    /// itself as its only member) into the cluster: group members move
    /// onto it, one at a time, until it holds its share
    Join {
        /// The new node's id
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        node: u64,
        /// The new node's gRPC address
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Take node ID out of the cluster: every group member it holds moves
    /// to the node that holds fewest; then it is dropped
    Leave {
        /// The node id
        #[arg(long, value_name = "ID")]
        node: u64,
    },
    /// Move one group's member from node FROM to node TO (planned after
    /// the moves before it; `status` shows it run)
    MoveShard {
        /// The shard (its whole group moves)
        #[arg(long, value_name = "N", conflicts_with = "group", required_unless_present = "group")]
        shard: Option<u32>,
        /// The group
        #[arg(long, value_name = "N")]
        group: Option<u32>,
        /// The node whose member leaves
        #[arg(long, value_name = "ID")]
        from: u64,
        /// The node that takes it
        #[arg(long, value_name = "ID")]
        to: u64,
    },
}

pub fn run(a: ClusterArgs) -> Result<(), Failure> {
    let (path, post, body) = match a.op {
        ClusterOp::Init => ("/admin/v1/cluster/init", true, String::new()),
        ClusterOp::Status => ("/admin/v1/cluster", false, String::new()),
        ClusterOp::Replace { from, to, to_addr } => {
            let body = serde_json::json!({ "from": from, "to": to, "to_addr": to_addr }).to_string();
            ("/admin/v1/cluster/replace", true, body)
        }
        ClusterOp::Join { node, addr } => {
            ("/admin/v1/cluster/join", true, serde_json::json!({ "node": node, "addr": addr }).to_string())
        }
        ClusterOp::Leave { node } => ("/admin/v1/cluster/leave", true, serde_json::json!({ "node": node }).to_string()),
        ClusterOp::MoveShard { shard, group, from, to } => {
            let mut body = serde_json::json!({ "from": from, "to": to });
            match (shard, group) {
                (Some(s), _) => body["shard"] = s.into(),
                (None, Some(g)) => body["group"] = g.into(),
                (None, None) => {}
            }
            ("/admin/v1/cluster/move", true, body.to_string())
        }
    };
    let url = format!("{}{path}", a.http.trim_end_matches('/'));
    let runtime = crate::runtime()?;
    let (status, body) = runtime
        .block_on(async {
            let target = Target::parse(&url, &Outbound::new(None)?)?;
            let bearer = format!("Bearer {}", a.token);
            let headers = [("authorization", bearer.as_str())];
            let answer = if post { target.post(&headers, &body).await } else { target.get(&headers).await };
            answer.map_err(|e| format!("{url}: {e}"))
        })
        .map_err(Failure::Run)?;
    if status != 200 {
        let sentence = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| Some(format!("{}: {}", v.get("code")?.as_str()?, v.get("message")?.as_str()?)))
            .unwrap_or(body);
        return Err(Failure::Run(format!("{url} answered {status}: {sentence}")));
    }
    say!("{body}");
    // A replacement that did not finish in every group is a failure (the
    // groups say why; asking again is harmless).
    let unfinished = serde_json::from_str::<Value>(&body).ok().is_some_and(|v| v["replaced"] == false);
    if unfinished {
        return Err(Failure::Run("the replacement did not finish in every group: ask again".into()));
    }
    Ok(())
}
