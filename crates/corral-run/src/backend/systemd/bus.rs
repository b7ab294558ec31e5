//! The connection to a systemd manager's D-Bus API.
//!
//! corral's run path is synchronous (`Backend::create` is a plain function called from
//! inside the run's async task), while zbus is async. So the connection lives on its
//! own small tokio runtime (one worker thread, `corral-dbus`); a call is spawned there
//! and its reply comes back over a std channel with a deadline. The calling thread may
//! block (it is corral's own, for a few milliseconds), and zbus' reader task keeps
//! running on the worker meanwhile. One connection per backend, reused by every run.
//!
//! `JobRemoved` signals are dispatched by one long-lived task to waiters keyed by unit
//! name. A waiter is registered *before* the call that enqueues the job, so a signal
//! that arrives before the method reply is never missed.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::export::futures_core::Stream;
use zbus::message::Type;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, MessageStream};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Which manager corral talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The system manager (PID 1), for root.
    System,
    /// The calling user's manager (`user@UID.service`).
    User(u32),
}

/// How corral reached the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Through the D-Bus broker (system or user bus), at this address.
    Bus(String),
    /// Peer to peer on the manager's private socket (no broker involved).
    Private(PathBuf),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Bus(a) => write!(f, "D-Bus at {a}"),
            Transport::Private(p) => write!(f, "its private socket {}", p.display()),
        }
    }
}

type Waiters = Arc<Mutex<HashMap<String, SyncSender<String>>>>;

/// A connected, subscribed manager.
pub struct Manager {
    rt: Option<tokio::runtime::Runtime>,
    conn: Connection,
    waiters: Waiters,
    /// System or user manager.
    pub scope: Scope,
    /// How it was reached.
    pub transport: Transport,
    /// Its `Version` property (e.g. `252.39-1~deb12u2`).
    pub version: String,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("scope", &self.scope)
            .field("transport", &self.transport)
            .field("version", &self.version)
            .finish()
    }
}

/// A job that is being waited for (see [`Manager::expect_job`]).
pub struct JobWait {
    unit: String,
    rx: Receiver<String>,
    waiters: Waiters,
}

impl JobWait {
    /// Waits for the unit's job to be removed and returns systemd's result (`done`,
    /// `failed`, `canceled`, `timeout`, `dependency`, `skipped`).
    pub fn wait(self, within: Duration) -> Result<String, String> {
        match self.rx.recv_timeout(within) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "systemd did not finish the job for {} within {within:?}",
                self.unit
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err("the connection to systemd was lost".to_string())
            }
        }
    }
}

impl Drop for JobWait {
    fn drop(&mut self) {
        lock(&self.waiters).remove(&self.unit);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The candidate transports for `scope`, in the order corral tries them, and an
/// optional preference from `CORRAL_SYSTEMD_BUS` (`private` or `bus`).
fn candidates(scope: Scope, prefer: Option<&str>) -> Vec<Transport> {
    let (private, bus) = match scope {
        Scope::System => (
            PathBuf::from("/run/systemd/private"),
            std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                .ok()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".to_string()),
        ),
        Scope::User(uid) => {
            let runtime = std::env::var("XDG_RUNTIME_DIR")
                .ok()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| format!("/run/user/{uid}"));
            (
                Path::new(&runtime).join("systemd/private"),
                std::env::var("DBUS_SESSION_BUS_ADDRESS")
                    .ok()
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| format!("unix:path={runtime}/bus")),
            )
        }
    };
    // The private socket first, as systemctl does: one hop less, and no broker needed.
    let private = Transport::Private(private);
    let bus = Transport::Bus(bus);
    match prefer {
        Some("bus") => vec![bus],
        Some("private") => vec![private],
        _ => vec![private, bus],
    }
}

fn socket_path(t: &Transport) -> Option<PathBuf> {
    match t {
        Transport::Private(p) => Some(p.clone()),
        Transport::Bus(a) => a
            .strip_prefix("unix:path=")
            .map(|p| PathBuf::from(p.split(',').next().unwrap_or(p))),
    }
}

async fn connect_one(t: &Transport) -> zbus::Result<Connection> {
    match t {
        Transport::Private(p) => {
            let s = tokio::net::UnixStream::connect(p).await?;
            zbus::connection::Builder::unix_stream(s)
                .p2p()
                .build()
                .await
        }
        Transport::Bus(a) => {
            zbus::connection::Builder::address(a.as_str())?
                .build()
                .await
        }
    }
}

/// Formats a zbus error; D-Bus errors as `Name: message`.
pub fn err_text(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{name}: {msg}"),
        zbus::Error::MethodError(name, None, _) => name.to_string(),
        other => other.to_string(),
    }
}

/// True for the D-Bus error systemd returns for an unknown unit.
pub fn is_no_such_unit(text: &str) -> bool {
    text.starts_with("org.freedesktop.systemd1.NoSuchUnit")
}

impl Manager {
    /// Connects to the manager of `scope`, subscribes to its signals and reads its
    /// version. Fails with every transport tried and why.
    pub fn connect(scope: Scope) -> Result<Manager, String> {
        let prefer = std::env::var("CORRAL_SYSTEMD_BUS").ok();
        let tried = candidates(scope, prefer.as_deref());
        // No socket at all: say so without starting anything.
        if !tried.iter().any(|t| socket_path(t).is_none_or_exists()) {
            let list: Vec<String> = tried.iter().map(|t| t.to_string()).collect();
            return Err(format!("no socket found ({})", list.join(", ")));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("corral-dbus")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the D-Bus thread: {e}"))?;
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        let (tx, rx) = sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(setup(tried, w).await);
        });
        let res = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "connecting to systemd timed out after 10 s".to_string())
            .and_then(|r| r);
        match res {
            Ok((conn, transport, version)) => Ok(Manager {
                rt: Some(rt),
                conn,
                waiters,
                scope,
                transport,
                version,
            }),
            Err(e) => {
                rt.shutdown_background();
                Err(e)
            }
        }
    }

    /// The major version number (`252` of `252.39-1~deb12u2`), 0 if unknown.
    pub fn major(&self) -> u32 {
        self.version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Runs `fut` on the D-Bus thread and waits up to `within` for its result.
    fn block<T: Send + 'static>(
        &self,
        within: Duration,
        fut: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the manager");
        let (tx, rx) = sync_channel(1);
        rt.spawn(async move {
            let r = match tokio::time::timeout(within, fut).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer from systemd within {within:?}")),
            };
            let _ = tx.send(r);
        });
        rx.recv_timeout(within + Duration::from_secs(1))
            .map_err(|_| format!("no answer from systemd within {within:?}"))?
    }

    /// Calls a method of the manager object and returns the reply.
    fn call<B>(
        &self,
        method: &'static str,
        body: B,
        within: Duration,
    ) -> Result<zbus::Message, String>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType + Send + Sync + 'static,
    {
        let conn = self.conn.clone();
        self.block(within, async move {
            conn.call_method(Some(DEST), PATH, Some(MANAGER), method, &body)
                .await
                .map_err(|e| err_text(&e))
        })
    }

    /// Registers interest in the next job of `unit`; call before enqueuing it.
    pub fn expect_job(&self, unit: &str) -> JobWait {
        let (tx, rx) = sync_channel(1);
        lock(&self.waiters).insert(unit.to_string(), tx);
        JobWait {
            unit: unit.to_string(),
            rx,
            waiters: self.waiters.clone(),
        }
    }

    /// `StartTransientUnit(name, "fail", props, [])`; returns the job path.
    pub fn start_transient_unit(
        &self,
        name: &str,
        props: Vec<(String, Value<'static>)>,
    ) -> Result<String, String> {
        let aux: Vec<(String, Vec<(String, Value<'static>)>)> = Vec::new();
        let reply = self.call(
            "StartTransientUnit",
            (name.to_string(), "fail".to_string(), props, aux),
            Duration::from_secs(10),
        )?;
        reply
            .body()
            .deserialize::<OwnedObjectPath>()
            .map(|p| p.to_string())
            .map_err(|e| err_text(&e))
    }

    /// `AttachProcessesToUnit(unit, subcgroup, pids)` (systemd ≥ 238).
    pub fn attach_processes(
        &self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> Result<(), String> {
        self.call(
            "AttachProcessesToUnit",
            (unit.to_string(), subcgroup.to_string(), pids.to_vec()),
            Duration::from_secs(10),
        )
        .map(drop)
    }

    /// `StopUnit(unit, "replace")`; returns the job path.
    pub fn stop_unit(&self, unit: &str) -> Result<String, String> {
        let reply = self.call(
            "StopUnit",
            (unit.to_string(), "replace".to_string()),
            Duration::from_secs(10),
        )?;
        reply
            .body()
            .deserialize::<OwnedObjectPath>()
            .map(|p| p.to_string())
            .map_err(|e| err_text(&e))
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // The backend may be dropped inside corral's own runtime, where a blocking
        // shutdown would panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

trait ExistsExt {
    fn is_none_or_exists(&self) -> bool;
}

impl ExistsExt for Option<PathBuf> {
    /// An address that is not a plain socket path (abstract, tcp) might work: try it.
    fn is_none_or_exists(&self) -> bool {
        match self {
            None => true,
            Some(p) => p.exists(),
        }
    }
}

/// Connects (first transport that works), starts the `JobRemoved` dispatcher,
/// subscribes, and reads the version.
async fn setup(
    tried: Vec<Transport>,
    waiters: Waiters,
) -> Result<(Connection, Transport, String), String> {
    let mut errors = Vec::new();
    for t in tried {
        if !socket_path(&t).is_none_or_exists() {
            errors.push(format!("{t}: no such socket"));
            continue;
        }
        match setup_on(&t, waiters.clone()).await {
            Ok((c, v)) => return Ok((c, t, v)),
            Err(e) => errors.push(format!("{t}: {e}")),
        }
    }
    Err(errors.join("; "))
}

async fn setup_on(t: &Transport, waiters: Waiters) -> Result<(Connection, String), String> {
    let conn = connect_one(t).await.map_err(|e| err_text(&e))?;
    let mut rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .interface(MANAGER)
        .and_then(|r| r.member("JobRemoved"))
        .and_then(|r| r.path(PATH))
        .map_err(|e| err_text(&e))?;
    // Peer-to-peer messages carry no sender.
    if conn.is_bus() {
        rule = rule.sender(DEST).map_err(|e| err_text(&e))?;
    }
    let stream = MessageStream::for_match_rule(rule.build(), &conn, Some(1024))
        .await
        .map_err(|e| err_text(&e))?;
    tokio::spawn(dispatch(stream, waiters));
    conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &())
        .await
        .map_err(|e| format!("Subscribe: {}", err_text(&e)))?;
    let reply = conn
        .call_method(
            Some(DEST),
            PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(MANAGER, "Version"),
        )
        .await
        .map_err(|e| format!("reading Version: {}", err_text(&e)))?;
    let v: OwnedValue = reply.body().deserialize().map_err(|e| err_text(&e))?;
    let version = String::try_from(v).unwrap_or_default();
    Ok((conn, version))
}

/// Hands each `JobRemoved(id, job, unit, result)` to the waiter for that unit.
async fn dispatch(mut stream: MessageStream, waiters: Waiters) {
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await;
        let Some(msg) = next else { break };
        let Ok(msg) = msg else { continue };
        let Ok((_id, _job, unit, result)) = msg
            .body()
            .deserialize::<(u32, OwnedObjectPath, String, String)>()
        else {
            continue;
        };
        if let Some(tx) = lock(&waiters).remove(&unit) {
            let _ = tx.try_send(result);
        }
    }
    // The connection is gone: wake every waiter with an error.
    lock(&waiters).clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports() {
        let v = candidates(Scope::System, None);
        assert_eq!(v[0], Transport::Private("/run/systemd/private".into()));
        assert!(matches!(v[1], Transport::Bus(_)));
        assert_eq!(candidates(Scope::System, Some("bus")).len(), 1);
        assert!(matches!(
            candidates(Scope::System, Some("bus"))[0],
            Transport::Bus(_)
        ));
        assert_eq!(candidates(Scope::User(4242), Some("private")).len(), 1);
        assert_eq!(
            socket_path(&Transport::Bus("unix:path=/run/x/bus,guid=00".into())),
            Some(PathBuf::from("/run/x/bus"))
        );
        assert_eq!(
            socket_path(&Transport::Bus("unix:abstract=/x".into())),
            None
        );
    }
}
