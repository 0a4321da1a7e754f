//! The HTTP ops side (axum, HTTP/1): `/health` and `/metrics` for machines,
//! and a small JSON admin API for people with curl:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/health` | 200 `{"status":"ok","version":…,"uptime_seconds":…,…}`, or 503 `{"status":"storage_failed","reason":…}` (reads still served) |
//! | GET | `/metrics` | Prometheus text |
//! | POST | `/admin/v1/requests` | a ledger request as JSON, or an array of them (≤ `max_batch`); one result each (a single refused request gets its HTTP status; a batch answers 200) |
//! | GET | `/admin/v1/accounts/{id}` | the balance view |
//! | GET | `/admin/v1/accounts/{id}/history?after_seq=&limit=` | a page of the ledger |
//! | GET | `/admin/v1/accounts/{id}/statement?from_ms=&to_ms=&points=` | usage by service over a range, and the balance at `points` instants |
//! | GET | `/admin/v1/accounts/{id}/items?kind=holds\|grants\|invoices&after_id=&limit=` | a page of open holds, grants or unpaid invoices |
//! | GET | `/admin/v1/accounts?prefix=&status=&after=&limit=` | a page of the accounts the node holds, in id order |
//! | GET | `/admin/v1/webhooks` | delivery figures and dead letters |
//! | GET | `/admin/v1/cluster` | clustered: this node's id and each shard group's leader, term and progress as it sees them |
//! | POST | `/admin/v1/cluster/init` | makes a new cluster of `cluster.members` (once, on one node) |
//! | POST | `/admin/v1/cluster/replace` | `{"from", "to", "to_addr"}`: node `to` takes node `from`'s place in every group |
//! | POST | `/admin/v1/cluster/join` | `{"node", "addr"}`: a node started empty comes in; moves onto it are planned |
//! | POST | `/admin/v1/cluster/leave` | `{"node"}`: every group member on the node is planned to move off it |
//! | POST | `/admin/v1/cluster/move` | `{"group" or "shard", "from", "to"}`: plans one group member's move |
//! | GET | `/openapi.json` | the OpenAPI 3.1 document of all of the above (`openapi.json` here) |
//!
//! A request's key is `idempotency_key` (as in the proto; `key` is read
//! too), or the `Idempotency-Key` header for a single request; a debit's
//! `mode` and `service` and a hold's `service` default as over gRPC
//! (`strict`, `api_request`).
//!
//! The admin API needs an `admin` token (`Authorization: Bearer …`). Errors
//! are `{"code": …, "message": …}` with the stable codes of docs/errors.md.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use crate::config::Role;
use crate::error::Error;
use crate::ledger::{AccountId, Request};

pub fn router(api: Arc<Api>) -> Router {
    let limit = api.cfg.server.max_message_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/v1/requests", post(requests))
        .route("/admin/v1/accounts/{id}", get(account))
        .route("/admin/v1/accounts/{id}/history", get(history))
        .route("/admin/v1/accounts/{id}/statement", get(statement))
        .route("/admin/v1/accounts/{id}/items", get(items))
        .route("/admin/v1/accounts", get(accounts))
        .route("/admin/v1/webhooks", get(webhooks))
        .route("/admin/v1/cluster", get(cluster_status))
        .route("/admin/v1/cluster/init", post(cluster_init))
        .route("/admin/v1/cluster/replace", post(cluster_replace))
        .route("/admin/v1/cluster/join", post(cluster_join))
        .route("/admin/v1/cluster/leave", post(cluster_leave))
        .route("/admin/v1/cluster/move", post(cluster_move))
        .route("/openapi.json", get(openapi))
        .fallback(no_such_path)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&api), with_request_id))
        .with_state(api)
}

/// Every HTTP call runs in a span with its request id (the caller's
/// `x-request-id`, or one made up), and the reply echoes it.
async fn with_request_id(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument;
    let id = api.request_id(req.headers().get("x-request-id").map(|v| v.as_bytes()));
    let span = tracing::debug_span!("http", request_id = %id, path = %req.uri().path());
    let mut response = next.run(req).instrument(span).await;
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The OpenAPI 3.1 document of this API (`src/server/openapi.json`; a
/// test runs schemathesis against a real server with it).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    let doc = OPENAPI.replacen("\"version\": \"VERSION\"", &format!("\"version\": \"{}\"", crate::VERSION), 1);
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// A path the API does not have: 404 with a JSON error like every other.
async fn no_such_path(uri: axum::http::Uri) -> Response {
    let e = Error::InvalidRequest(format!("no such path: {}", uri.path()));
    (StatusCode::NOT_FOUND, axum::Json(error_json(&e))).into_response()
}

/// A path segment that is not text (bad percent-encoding) is not an id.
fn path_id(path: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Result<AccountId, Error> {
    match path {
        Ok(Path(id)) => account_id(&id),
        Err(_) => Err(Error::Refused(crate::ledger::Reason::InvalidAccountId)),
    }
}

/// By the stable code, so another node's answer (`Error::Remote`) gets
/// the status this node would give it.
fn http_status(e: &Error) -> StatusCode {
    match e.code() {
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "batch_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "overloaded" => StatusCode::TOO_MANY_REQUESTS,
        "shutting_down" | "storage_unavailable" | "shard_unavailable" | "outcome_unknown" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "wrong_node" => StatusCode::MISDIRECTED_REQUEST,
        "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        "unknown_account" => StatusCode::NOT_FOUND,
        // The ledger's other refusals and invalid_request.
        _ => StatusCode::BAD_REQUEST,
    }
}

fn error_json(e: &Error) -> Value {
    json!({ "code": e.code(), "message": e.to_string() })
}

fn refuse(e: Error) -> Response {
    (http_status(&e), axum::Json(error_json(&e))).into_response()
}

fn admin(api: &Api, headers: &HeaderMap) -> Result<(), Error> {
    let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match api.auth.role(header)? {
        Role::Admin => Ok(()),
        Role::Authorize => Err(Error::Forbidden("use the admin API")),
    }
}

async fn health(State(api): State<Arc<Api>>) -> Response {
    let node = match api.node() {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    let resident = node.resident_accounts();
    let (version, uptime) = (crate::VERSION, api.started.elapsed().as_secs());
    match node.storage_failure() {
        None => axum::Json(json!({
            "status": "ok",
            "resident_accounts": resident,
            "version": version,
            "uptime_seconds": uptime,
        }))
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "storage_failed",
                "reason": reason,
                "writes": "refused",
                "reads": "served",
                "version": version,
                "uptime_seconds": uptime,
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let text = api.metrics.render(&api.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn requests(State(api): State<Arc<Api>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let e = Error::InvalidRequest(format!("the body cannot be read ({e}); at most server.max_message_bytes"));
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(error_json(&e))).into_response();
        }
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(Error::InvalidRequest(format!("the body is not JSON: {e}"))),
    };
    let (single, items) = match value {
        Value::Array(items) => (false, items),
        other => (true, vec![other]),
    };
    let max = api.cfg.node.max_batch;
    if items.len() > max {
        return refuse(Error::BatchTooLarge { max });
    }
    // Each request's place: the index of the request the node runs, or its
    // refusal in place (an amount that is not one is `invalid_amount`, as
    // over gRPC; any other malformed request refuses the call).
    let mut reqs = Vec::with_capacity(items.len());
    let mut slots: Vec<Result<usize, Error>> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match serde_json::from_value::<Request>(item) {
            Ok(r) if r.command.is_internal() => {
                return refuse(Error::InvalidRequest(format!(
                    "request {i}: {} is the node's own command, not one the API takes",
                    r.command.name()
                )));
            }
            Ok(r) => {
                slots.push(Ok(reqs.len()));
                reqs.push(r);
            }
            Err(e) => match amount_error(&e) {
                Some(reason) => slots.push(Err(Error::Refused(reason))),
                None => return refuse(Error::InvalidRequest(format!("request {i}: {e}"))),
            },
        }
    }
    // A single request may carry its key in the `Idempotency-Key` header;
    // a key in both places must agree. A batch's requests carry their own.
    if !single && headers.contains_key("idempotency-key") {
        return refuse(Error::InvalidRequest(
            "the Idempotency-Key header is for a single request; in a batch each request carries its idempotency_key"
                .into(),
        ));
    }
    if let (true, Some(header)) = (single, headers.get("idempotency-key")) {
        let key = match header.to_str().ok().map(crate::ledger::IdemKey::new) {
            Some(Ok(key)) => key,
            _ => return refuse(Error::Refused(crate::ledger::Reason::InvalidIdempotencyKey)),
        };
        match reqs.first_mut() {
            Some(first) if first.key.as_ref().is_some_and(|body| body != &key) => {
                return refuse(Error::InvalidRequest(
                    "the Idempotency-Key header and the body's idempotency_key differ".into(),
                ));
            }
            Some(first) => first.key = Some(key),
            None => {}
        }
    }
    let start = Instant::now();
    let names: Vec<&'static str> = reqs.iter().map(|r| r.command.name()).collect();
    let results = match (reqs.is_empty(), api.node()) {
        (true, _) => Ok(Vec::new()),
        (false, Ok(node)) => node.execute_batch(reqs).await,
        (false, Err(e)) => Err(e),
    };
    let results = match results {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let codes: Vec<_> =
        names.iter().zip(&results).map(|(n, r)| (*n, r.as_ref().map(|_| "ok").unwrap_or_else(|e| e.code()))).collect();
    api.metrics.record(&codes, start.elapsed());
    let mut ran = results.into_iter();
    let results: Vec<Result<crate::ledger::Reply, Error>> = slots
        .into_iter()
        .map(|slot| match slot {
            Ok(_) => ran.next().unwrap_or_else(|| Err(Error::Internal("a result is missing".into()))),
            Err(e) => Err(e),
        })
        .collect();
    let first_error = match results.first() {
        Some(Err(e)) if single => Some(e.clone()),
        _ => None,
    };
    let first_replayed = single && matches!(results.first(), Some(Ok(reply)) if reply.replayed);
    let out: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(reply) => json!({ "ok": reply, "replayed": reply.replayed }),
            Err(e) => json!({ "error": error_json(&e) }),
        })
        .collect();
    // A single request refused is refused with its HTTP status; a batch
    // answers 200 with one result each (some may be refusals). A single
    // reply that is a key's first result again says so in a header too.
    if single {
        let first = out.into_iter().next().unwrap_or(Value::Null);
        return match first_error {
            Some(e) => (http_status(&e), axum::Json(first)).into_response(),
            None if first_replayed => ([("idempotent-replayed", "true")], axum::Json(first)).into_response(),
            None => axum::Json(first).into_response(),
        };
    }
    axum::Json(Value::Array(out)).into_response()
}

/// The reason of a JSON error that is an amount's (`AmountError`'s text
/// starts it), as gRPC would refuse the same amount.
fn amount_error(e: &serde_json::Error) -> Option<crate::ledger::Reason> {
    use crate::ledger::AmountError as A;
    let text = e.to_string();
    [A::Empty, A::TooLong, A::NotANumber, A::TooManyDecimals, A::Overflow]
        .into_iter()
        .find(|a| text.starts_with(&a.to_string()))
        .map(crate::ledger::Reason::from)
}

fn account_id(id: &str) -> Result<AccountId, Error> {
    Ok(AccountId::new(id)?)
}

async fn account(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let id = match path_id(id) {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    let node = match api.node() {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    match node.balance(&id).await {
        Ok(view) => axum::Json(json!(view)).into_response(),
        Err(e) => refuse(e),
    }
}

async fn cluster_status(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let node = match api.node() {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    match node.cluster_status() {
        None => axum::Json(json!({ "clustered": false, "node_id": 0, "groups": [] })).into_response(),
        Some(groups) => {
            let id = node.config().cluster.node_id;
            let map = node.shard_map().map(|m| {
                let nodes: Vec<Value> =
                    m.nodes.iter().map(|(id, n)| json!({ "node": id, "addr": n.addr, "leaving": n.leaving })).collect();
                let moves: Vec<Value> =
                    m.moves.iter().map(|mv| json!({ "group": mv.group, "from": mv.from, "to": mv.to })).collect();
                let done: Vec<Value> = m
                    .done
                    .iter()
                    .map(|(mv, outcome)| {
                        let outcome = outcome.as_ref().map_or_else(|e| e.clone(), |()| "moved".to_string());
                        json!({ "group": mv.group, "from": mv.from, "to": mv.to, "outcome": outcome })
                    })
                    .collect();
                json!({ "version": m.version, "nodes": nodes, "planned": moves, "done": done })
            });
            axum::Json(json!({ "clustered": true, "node_id": id, "map": map, "groups": groups })).into_response()
        }
    }
}

async fn cluster_init(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let node = match api.node() {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    match node.cluster_init().await {
        Ok(()) => axum::Json(json!({ "initialized": true })).into_response(),
        Err(e) => refuse(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replace {
    from: u64,
    to: u64,
    to_addr: String,
}

async fn cluster_replace(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<axum::Json<Replace>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let r = match body {
        Ok(axum::Json(r)) => r,
        Err(e) => return refuse(Error::InvalidRequest(format!("the body is not {{from, to, to_addr}}: {e}"))),
    };
    let node = match api.node() {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    match node.cluster_replace(r.from, r.to, &r.to_addr).await {
        Ok(groups) => {
            let done = groups.iter().all(|(_, outcome)| outcome == "replaced");
            let groups: Vec<Value> = groups.into_iter().map(|(g, o)| json!({ "group": g, "outcome": o })).collect();
            axum::Json(json!({ "replaced": done, "groups": groups })).into_response()
        }
        Err(e) => refuse(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Join {
    node: u64,
    addr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Leave {
    node: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    group: Option<u32>,
    shard: Option<u32>,
    from: u64,
    to: u64,
}

/// Answers a change of the map: the map's version after it.
fn planned(outcome: Result<u64, Error>) -> Response {
    match outcome {
        Ok(version) => axum::Json(json!({ "planned": true, "version": version })).into_response(),
        Err(e) => refuse(e),
    }
}

async fn cluster_join(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<axum::Json<Join>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let j = match body {
        Ok(axum::Json(j)) => j,
        Err(e) => return refuse(Error::InvalidRequest(format!("the body is not {{node, addr}}: {e}"))),
    };
    match api.node() {
        Ok(node) => planned(node.cluster_join(j.node, &j.addr).await),
        Err(e) => refuse(e),
    }
}

async fn cluster_leave(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<axum::Json<Leave>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let l = match body {
        Ok(axum::Json(l)) => l,
        Err(e) => return refuse(Error::InvalidRequest(format!("the body is not {{node}}: {e}"))),
    };
    match api.node() {
        Ok(node) => planned(node.cluster_leave(l.node).await),
        Err(e) => refuse(e),
    }
}

async fn cluster_move(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<axum::Json<MoveBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let m = match body {
        Ok(axum::Json(m)) => m,
        Err(e) => return refuse(Error::InvalidRequest(format!("the body is not {{group or shard, from, to}}: {e}"))),
    };
    let node = match api.node() {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    let (shards, per_group, _) = node.cluster_map();
    let group = match (m.group, m.shard) {
        (Some(g), None) => g,
        (None, Some(s)) if per_group > 0 && s < shards => s / per_group,
        (None, Some(s)) => return refuse(Error::InvalidRequest(format!("there is no shard {s} (there are {shards})"))),
        _ => return refuse(Error::InvalidRequest("name a group or a shard, one of them".into())),
    };
    planned(node.cluster_move(group, m.from, m.to).await)
}

#[derive(Deserialize)]
struct Page {
    after_seq: Option<u64>,
    limit: Option<u32>,
}

async fn history(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let id = match path_id(id) {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    let Ok(Query(page)) = page else {
        return refuse(Error::InvalidRequest("after_seq and limit are whole numbers".into()));
    };
    let node = match api.node() {
        Ok(node) => node,
        Err(e) => return refuse(e),
    };
    match node.history(&id, page.after_seq.unwrap_or(0), page.limit.unwrap_or(100)) {
        Ok(records) => {
            let out: Vec<Value> = records
                .iter()
                .map(|r| {
                    let (kind, fields) = crate::wire::event_json(r);
                    json!({ "seq": r.seq, "at_ms": r.at_ms, "balance_after": r.balance_after, "kind": kind, "event": fields })
                })
                .collect();
            axum::Json(Value::Array(out)).into_response()
        }
        Err(e) => refuse(e),
    }
}

#[derive(Deserialize)]
struct Range {
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    points: Option<u32>,
}

async fn statement(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    range: Result<Query<Range>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let id = match path_id(id) {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    let Ok(Query(r)) = range else {
        return refuse(Error::InvalidRequest("from_ms, to_ms and points are whole numbers".into()));
    };
    let (Some(from_ms), Some(to_ms)) = (r.from_ms, r.to_ms) else {
        return refuse(Error::InvalidRequest("a statement needs from_ms and to_ms".into()));
    };
    match api.node() {
        Ok(node) => match node.statement(&id, from_ms, to_ms, r.points.unwrap_or(30)) {
            Ok(st) => {
                let usage: Vec<Value> =
                    st.usage.by_service.iter().map(|(s, a)| json!({ "service": s, "amount": a })).collect();
                let series: Vec<Value> = st.series.iter().map(|(t, b)| json!({ "at_ms": t, "balance": b })).collect();
                axum::Json(json!({
                    "from_ms": st.from_ms, "to_ms": st.to_ms, "usage": usage, "usage_total": st.usage.total,
                    "series": series, "records_read": st.records_read,
                }))
                .into_response()
            }
            Err(e) => refuse(e),
        },
        Err(e) => refuse(e),
    }
}

#[derive(Deserialize)]
struct ItemsQuery {
    kind: Option<String>,
    after_id: Option<u64>,
    limit: Option<u32>,
}

async fn items(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ItemsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let id = match path_id(id) {
        Ok(id) => id,
        Err(e) => return refuse(e),
    };
    let Ok(Query(q)) = query else {
        return refuse(Error::InvalidRequest("after_id and limit are whole numbers".into()));
    };
    let kind = match crate::node::reads::ItemKind::parse(q.kind.as_deref().unwrap_or("")) {
        Ok(kind) => kind,
        Err(e) => return refuse(e),
    };
    match api.node() {
        Ok(node) => match node.items(&id, kind, q.after_id.unwrap_or(0), q.limit.unwrap_or(100)) {
            Ok(items) => {
                let list = match kind {
                    crate::node::reads::ItemKind::Holds => json!({ "holds": items.holds }),
                    crate::node::reads::ItemKind::Grants => json!({ "grants": items.grants }),
                    crate::node::reads::ItemKind::Invoices => json!({ "invoices": items.invoices }),
                };
                let mut out = list;
                out["next_after"] = json!(items.next_after);
                axum::Json(out).into_response()
            }
            Err(e) => refuse(e),
        },
        Err(e) => refuse(e),
    }
}

#[derive(Deserialize)]
struct AccountsQuery {
    prefix: Option<String>,
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

async fn accounts(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<AccountsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    let Ok(Query(q)) = query else {
        return refuse(Error::InvalidRequest("limit is a whole number".into()));
    };
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match serde_json::from_value::<crate::ledger::Status>(Value::String(s.to_string())) {
            Ok(status) => Some(status),
            Err(_) => {
                return refuse(Error::InvalidRequest(format!(
                    "status {s:?} is inactive, active, suspended, frozen or closed"
                )));
            }
        },
    };
    let after = match q.after.as_deref().filter(|a| !a.is_empty()).map(AccountId::new).transpose() {
        Ok(after) => after,
        Err(r) => return refuse(Error::Refused(r)),
    };
    match api.node() {
        Ok(node) => {
            match node.accounts(q.prefix.as_deref().unwrap_or(""), status, after.as_ref(), q.limit.unwrap_or(100)) {
                Ok(page) => axum::Json(json!(page)).into_response(),
                Err(e) => refuse(e),
            }
        }
        Err(e) => refuse(e),
    }
}

async fn webhooks(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Err(e) = admin(&api, &headers) {
        return refuse(e);
    }
    match &api.webhooks {
        None => axum::Json(json!({ "enabled": false })).into_response(),
        Some(w) => axum::Json(json!({
            "enabled": true,
            "figures": w.figures(),
            "dead_letters": w.dead_letters(),
        }))
        .into_response(),
    }
}
