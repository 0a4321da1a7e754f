//! What a node answers when it does not answer with a reply: the ledger's
//! refusal, or a condition of the node itself. Every case has a stable code
//! (docs/errors.md) and a sentence.

use crate::ledger::Reason;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The ledger refused the request; nothing was applied.
    #[error("{0}")]
    Refused(#[from] Reason),
    /// A write or sync failed: nothing is acknowledged from then on, and the
    /// request's outcome is unknown if it was in the failing group.
    #[error("storage is unavailable ({0}); no write is acknowledged until the node restarts")]
    StorageUnavailable(String),
    /// The account's queue is full: nothing was applied; retry later.
    #[error("the node is overloaded; nothing was applied, retry later")]
    Overloaded,
    /// The node is stopping: nothing was applied.
    #[error("the node is shutting down; nothing was applied")]
    ShuttingDown,
    #[error("a batch holds at most {max} requests")]
    BatchTooLarge { max: usize },
    /// A bug: the request's outcome is unknown (retry with the same
    /// idempotency key).
    #[error("internal error ({0}); the outcome is unknown, retry with the same idempotency key")]
    Internal(String),
    /// The request is not well formed for the wire (a missing operation, an
    /// unknown enum value, malformed JSON): nothing was applied.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Clustered: this node does not lead the account's shard. Nothing was
    /// applied; send it to the leader (`leader`, a node id, when known).
    #[error("{sentence}")]
    WrongNode { shard: u32, leader: Option<u64>, sentence: String },
    /// Clustered: the account's shard has no leader this node can send it
    /// to for now, or leadership moved before the request was proposed.
    /// Nothing was applied; retry.
    #[error("{0}")]
    ShardUnavailable(String),
    /// Clustered: the request's group commit did not finish (it timed out,
    /// or the leader was deposed while it ran), or a forward to the leader
    /// got no answer. It may or may not have been applied; a resend under
    /// the same idempotency key applies it once.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Clustered: the answer of the node a request was forwarded to, as it
    /// gave it (its stable code and sentence).
    #[error("{message}")]
    Remote { code: &'static str, message: String },
    #[error("no valid API token was given")]
    Unauthenticated,
    #[error("the token's role may not {0}")]
    Forbidden(&'static str),
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::Refused(reason) => reason.code(),
            Error::StorageUnavailable(_) => "storage_unavailable",
            Error::Overloaded => "overloaded",
            Error::ShuttingDown => "shutting_down",
            Error::BatchTooLarge { .. } => "batch_too_large",
            Error::Internal(_) => "internal",
            Error::InvalidRequest(_) => "invalid_request",
            Error::WrongNode { .. } => "wrong_node",
            Error::ShardUnavailable(_) => "shard_unavailable",
            Error::OutcomeUnknown(_) => "outcome_unknown",
            Error::Remote { code, .. } => code,
            Error::Unauthenticated => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
        }
    }

    /// Another node's answer with `code` and `message` (forwarding): the
    /// code as this build knows it, or `internal` for one it does not.
    pub fn remote(code: &str, message: String) -> Error {
        let known = Reason::ALL_CODES.iter().chain(Error::NODE_CODES).find(|c| **c == code);
        match known {
            Some(code) => Error::Remote { code, message },
            None => {
                Error::Internal(format!("another node answered with a code this one does not know: {code}: {message}"))
            }
        }
    }

    /// The node's own codes, for docs/errors.md.
    pub const NODE_CODES: &'static [&'static str] = &[
        "storage_unavailable",
        "overloaded",
        "shutting_down",
        "batch_too_large",
        "internal",
        "invalid_request",
        "wrong_node",
        "shard_unavailable",
        "outcome_unknown",
        "unauthenticated",
        "forbidden",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another node's answer keeps its stable code when this build knows
    /// it; an unknown one is `internal`, with the sentence kept.
    #[test]
    fn a_forwarded_answer_keeps_its_code_or_is_internal() {
        let known = Error::remote("insufficient_funds", "the balance is 0.00".into());
        assert_eq!((known.code(), known.to_string().as_str()), ("insufficient_funds", "the balance is 0.00"));
        assert_eq!(Error::remote("wrong_node", "node 2 leads".into()).code(), "wrong_node");
        let unknown = Error::remote("made_up", "what".into());
        assert_eq!(unknown.code(), "internal");
        assert!(unknown.to_string().contains("made_up: what"), "{unknown}");
    }
}
