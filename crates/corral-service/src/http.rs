//! The HTTP/JSON API (axum): routes, error bodies, output streaming.
//!
//! Every route is declared once in `routes!`, which builds both the router and
//! [`ROUTES`], the list a test compares with `openapi.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::config::MAX_BODY;
use crate::service::{Caller, Cancelled, Forbidden, Service, ServiceError, Submitted};
use crate::wire::{ErrorBody, RunState};

/// The OpenAPI 3 document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The live page served at `/ui`: one HTML file with its CSS and JavaScript inline.
pub const UI_PAGE: &str = include_str!("ui.html");

/// What the page may load: only itself and the service's own API (no other origin).
const UI_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

type App = Arc<Service>;

/// An error answer: a status code and one clear message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message for `{"error": ...}`.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

/// The status code of a core error: the one place the core's errors meet HTTP.
pub fn status_for(e: &ServiceError) -> StatusCode {
    match e {
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
        ServiceError::Unauthenticated => StatusCode::UNAUTHORIZED,
        ServiceError::KeyTaken => StatusCode::CONFLICT,
        ServiceError::KeyReused => StatusCode::CONFLICT,
        ServiceError::NoCwd(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServiceError::Refused(_) | ServiceError::OverBudget(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::Draining => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Gone(_) => StatusCode::GONE,
        ServiceError::Ledger(_)
        | ServiceError::LedgerTask(_)
        | ServiceError::Encode(_)
        | ServiceError::NoUniqueId
        | ServiceError::UnknownGroup { .. }
        | ServiceError::OutputDir { .. }
        | ServiceError::Executor(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        ApiError::new(status_for(&e), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Who is at the other end of a connection, as the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A Unix socket connection: the peer's uid, gid and pid at connect
    /// (`SO_PEERCRED`), or `None` when they cannot be read.
    Unix(Option<(u32, u32, Option<i32>)>),
    /// A loopback TCP connection: the caller is whoever its bearer token stands for.
    Tcp(std::net::SocketAddr),
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(s: IncomingStream<'_, tokio::net::UnixListener>) -> Peer {
        Peer::Unix(s.io().peer_cred().ok().map(|c| (c.uid(), c.gid(), c.pid())))
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(s: IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer::Tcp(*s.remote_addr())
    }
}

/// The caller of a request, from its connection's [`Peer`] (Unix) or its bearer token
/// (TCP). A request that did not come through a listener with peer information is
/// refused (403); a TCP request without a known token, 401.
struct Who(Caller);

impl FromRequestParts<App> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &App) -> Result<Who, ApiError> {
        match parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0) {
            Some(Peer::Unix(Some((uid, gid, pid)))) => Ok(Who(s.caller(uid, gid, pid))),
            Some(Peer::Tcp(_)) => {
                let token = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                match token.and_then(|t| s.token_caller(t)) {
                    Some(c) => Ok(Who(c)),
                    None => Err(ServiceError::Unauthenticated.into()),
                }
            }
            Some(Peer::Unix(None)) | None => Err(ServiceError::from(Forbidden::Unknown).into()),
        }
    }
}

macro_rules! routes {
    ($( $method:ident $path:literal => $handler:path ),* $(,)?) => {
        /// Every route of the API as (method, path), in the order declared.
        pub const ROUTES: &[(&str, &str)] = &[ $( (stringify!($method), $path) ),* ];

        fn declared_routes() -> Router<App> {
            Router::new() $( .route($path, axum::routing::$method($handler)) )*
        }
    };
}

routes! {
    get "/health" => health,
    get "/metrics" => metrics,
    get "/openapi.json" => openapi,
    post "/runs" => submit,
    get "/runs" => list,
    get "/runs/{id}" => status,
    get "/runs/{id}/wait" => wait,
    post "/runs/{id}/cancel" => cancel,
    get "/runs/{id}/output" => output,
    get "/ui" => ui,
    get "/runs/{id}/timeline" => timeline,
}

/// The router of the service.
pub fn router(svc: Arc<Service>) -> Router {
    declared_routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {method} {}; the API is described at /openapi.json",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; see /openapi.json",
            uri.path()
        ),
    )
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("invalid query string: {}", e.body_text()),
    )
}

async fn health(State(s): State<App>) -> Response {
    Json(s.health()).into_response()
}

async fn metrics(State(s): State<App>) -> Result<Response, ApiError> {
    let snap = s.snapshot().await?;
    let text = crate::metrics::render(&s.metrics, &snap);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /ui`: the page needs no caller (it holds no data); what it fetches is
/// authenticated like any other request.
async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, UI_CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        UI_PAGE,
    )
        .into_response()
}

async fn submit(
    State(s): State<App>,
    Who(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "the request body is larger than the {} KiB limit",
                    MAX_BODY / 1024
                ),
            )
        } else {
            ApiError::new(
                status,
                format!("cannot read the request body: {}", e.body_text()),
            )
        }
    })?;
    let (how, resp) = s.submit(&who, &body).await?;
    let code = match how {
        Submitted::New => StatusCode::CREATED,
        Submitted::Repeated => StatusCode::OK,
    };
    Ok((code, Json(resp)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    /// `false`: the records without their timelines (the live page's light list).
    timeline: Option<bool>,
}

async fn list(
    State(s): State<App>,
    Who(who): Who,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let state = match q.state.as_deref() {
        None => None,
        Some(st) => Some(
            st.parse::<RunState>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?,
        ),
    };
    // As /openapi.json documents it: 1 to 10000, not silently clamped.
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to 10000, got {limit}"),
        ));
    }
    let mut list = s.list(&who, state, limit).await?;
    if q.timeline == Some(false) {
        for r in list.runs.iter_mut().filter_map(|st| st.record.as_mut()) {
            r.timeline = None;
        }
    }
    Ok(Json(list).into_response())
}

async fn status(
    State(s): State<App>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.status(&who, &id).await?).into_response())
}

async fn timeline(
    State(s): State<App>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.timeline(&who, &id).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    timeout: Option<f64>,
}

/// The default and the largest `timeout` of `/wait`, in seconds.
pub const WAIT_DEFAULT_S: f64 = 30.0;
/// See [`WAIT_DEFAULT_S`].
pub const WAIT_MAX_S: f64 = 3600.0;

async fn wait(
    State(s): State<App>,
    Who(who): Who,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let t = q.timeout.unwrap_or(WAIT_DEFAULT_S);
    if !(t.is_finite() && t >= 0.0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "timeout must be a number of seconds >= 0",
        ));
    }
    let (done, st) = s
        .wait(&who, &id, Duration::from_secs_f64(t.min(WAIT_MAX_S)))
        .await?;
    let code = if done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(st)).into_response())
}

async fn cancel(
    State(s): State<App>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (how, st) = s.cancel(&who, &id).await?;
    let code = match how {
        Cancelled::Dequeued | Cancelled::NotActive => StatusCode::OK,
        Cancelled::Signalled => StatusCode::ACCEPTED,
    };
    Ok((code, Json(st)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    stream: Option<String>,
    #[serde(default)]
    follow: bool,
}

struct Tail {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    done: Option<watch::Receiver<bool>>,
    follow: bool,
    finishing: bool,
}

impl Tail {
    fn is_done(&self) -> bool {
        match &self.done {
            Some(d) => *d.borrow(),
            None => true,
        }
    }

    /// Waits a little for the file to grow or the run to end.
    async fn pause(&mut self) {
        let tick = tokio::time::sleep(Duration::from_millis(100));
        match &mut self.done {
            Some(rx) => {
                tokio::select! {
                    _ = tick => {}
                    _ = rx.changed() => {}
                }
            }
            None => tick.await,
        }
    }

    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.file.is_none() {
                match tokio::fs::File::open(&self.path).await {
                    Ok(f) => self.file = Some(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if !self.follow || self.is_done() {
                            return None;
                        }
                        self.pause().await;
                        continue;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let f = self.file.as_mut().expect("opened");
            let mut buf = vec![0u8; 64 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => {
                    if !self.follow || self.finishing {
                        return None;
                    }
                    if self.is_done() {
                        // The record is stored after the output is complete: one more
                        // pass reads whatever was written last.
                        self.finishing = true;
                        continue;
                    }
                    self.pause().await;
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Some(Ok(Bytes::from(buf)));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

async fn output(
    State(s): State<App>,
    Who(who): Who,
    Path(id): Path<String>,
    q: Result<Query<OutputQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(query_error)?;
    let stream = q.stream.as_deref().unwrap_or("stdout");
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown stream {stream:?}; use stdout or stderr"),
        ));
    }
    let (path, done) = s.output(&who, &id, stream).await?;
    let tail = Tail {
        path,
        file: None,
        done,
        follow: q.follow,
        finishing: false,
    };
    let body =
        futures_util::stream::unfold(
            tail,
            |mut t| async move { t.next_chunk().await.map(|c| (c, t)) },
        );
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::NeedError;
    use crate::ledger::LedgerError;
    use crate::service::validate::Invalid;
    use crate::service::OutputGone;

    /// Each kind of core error gets its status here, and its message unchanged.
    #[test]
    fn core_errors_map_to_statuses() {
        let cases: Vec<(ServiceError, StatusCode, &str)> = vec![
            (
                ServiceError::NotFound("r1".into()),
                StatusCode::NOT_FOUND,
                "no run with id \"r1\"",
            ),
            (
                Invalid::IdempotencyKey.into(),
                StatusCode::BAD_REQUEST,
                "\"idempotency_key\" must be 1-256 characters",
            ),
            (
                NeedError::NoCpuLimit { budget: 1.0 }.into(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "the run has no CPU limit, so it could use all of the service's 1 CPU budget; \
                 give it a CPU limit (e.g. \"limits\": {\"cpus\": 0.5})",
            ),
            (
                crate::service::Forbidden::OtherUser {
                    uid: 1001,
                    asked: "root".into(),
                }
                .into(),
                StatusCode::FORBIDDEN,
                "uid 1001 may not run commands as user \"root\": runs execute as their \
                 submitter; only root and members of the service's --admin-group may name \
                 another user",
            ),
            (
                crate::service::Forbidden::Unknown.into(),
                StatusCode::FORBIDDEN,
                "the corral service cannot tell who is calling (no peer credentials)",
            ),
            (
                ServiceError::KeyTaken,
                StatusCode::CONFLICT,
                "the idempotency key is already used by another user's run; choose another key",
            ),
            (
                ServiceError::Conflict("r1".into()),
                StatusCode::CONFLICT,
                "a run with id \"r1\" already exists",
            ),
            (
                ServiceError::Draining,
                StatusCode::SERVICE_UNAVAILABLE,
                "the corral service is shutting down and accepts no new runs",
            ),
            (
                OutputGone {
                    id: "r1".into(),
                    stream: "stderr".into(),
                    bytes: 3,
                    keep: None,
                }
                .into(),
                StatusCode::GONE,
                "the stderr of run r1 (3 bytes) is no longer kept: it was removed from the \
                 output directory (corral serve --keep-output); the run's record is still \
                 available",
            ),
            (
                LedgerError::NoRun("r1".into()).into(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "ledger: no run r1 in the ledger",
            ),
            (
                ServiceError::NoUniqueId,
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not generate a unique run id",
            ),
        ];
        for (e, status, message) in cases {
            let a = ApiError::from(e);
            assert_eq!((a.status, a.message.as_str()), (status, message));
        }
        let e = serde_json::from_str::<u8>("x").unwrap_err();
        let a = ApiError::from(ServiceError::from(Invalid::Json(e)));
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(
            a.message.starts_with("invalid JSON body: "),
            "{}",
            a.message
        );
    }

    /// Every route of the router is in the OpenAPI document with its method, and the
    /// document lists no route the router lacks.
    #[test]
    fn openapi_matches_the_router() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        for (m, p) in ROUTES {
            let ops = paths
                .get(*p)
                .unwrap_or_else(|| panic!("{p} missing from openapi.json"));
            assert!(
                ops.get(*m).is_some(),
                "{} {p} missing from openapi.json",
                m.to_uppercase()
            );
        }
        for (p, ops) in paths {
            for m in ops.as_object().unwrap().keys() {
                if m == "parameters" {
                    continue;
                }
                assert!(
                    ROUTES.contains(&(m.as_str(), p.as_str())),
                    "openapi.json documents {} {p}, which the router does not serve",
                    m.to_uppercase()
                );
            }
        }
    }
}
