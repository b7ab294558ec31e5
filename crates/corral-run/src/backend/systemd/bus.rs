//! The connection to a systemd manager's D-Bus API.
//!
//! corral's run path is synchronous (`Backend::create` is a plain function called from
//! inside the run's async task), while zbus is async. So the connection lives on its
//! own small tokio runtime (one worker thread, `corral-dbus`); a call is spawned there
//! and its reply comes back over a std channel with a deadline. The calling thread may
//! block (it is corral's own, for a few milliseconds), and zbus' reader task keeps
//! running on the worker meanwhile. One connection per backend, reused by every run.
//!
//! Only the D-Bus brokers are used (the system bus for root, the user bus otherwise).
//! systemd's private sockets (`/run/systemd/private`, `$XDG_RUNTIME_DIR/systemd/private`)
//! are not: sd-bus puts the well-known name `org.freedesktop.systemd1` into the sender
//! field of messages on those peer-to-peer connections, and zbus 5 takes the sender for
//! a unique name and panics in its socket reader (seen with systemd 252 and zbus 5.12).
//!
//! `JobRemoved` signals are dispatched by one long-lived task to waiters keyed by unit
//! name. A waiter is registered *before* the call that enqueues the job, so a signal
//! that arrives before the method reply is never missed.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
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

type Waiters = Arc<Mutex<HashMap<String, SyncSender<String>>>>;

/// The D-Bus error name systemd answers for an unknown unit.
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// Why talking to a manager failed. Each message names its cause, so causes are
/// fields rather than `source()` (corral prints error chains joined, which would
/// repeat them).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus socket does not exist (nothing was started to find out).
    #[error("no D-Bus socket at {}", .0.display())]
    NoSocket(PathBuf),
    /// The thread that runs the connection could not be started.
    #[error("cannot start the D-Bus thread: {0}")]
    Thread(std::io::Error),
    /// Connecting took longer than 10 s.
    #[error("connecting to {0} timed out after 10 s")]
    ConnectTimeout(String),
    /// Connecting to `address` failed.
    #[error("{address}: {error}")]
    Connect {
        /// The bus address.
        address: String,
        /// Why.
        error: Box<BusError>,
    },
    /// A step of setting up the connection failed (`Subscribe`, reading `Version`).
    #[error("{step}: {error}")]
    Setup {
        /// The step.
        step: &'static str,
        /// Why.
        error: Box<BusError>,
    },
    /// The manager answered a call with a D-Bus error.
    #[error("{name}{}", .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Method {
        /// The error name (`org.freedesktop.systemd1.NoSuchUnit`, ...).
        name: String,
        /// Its message, if any.
        message: Option<String>,
    },
    /// Any other failure of the D-Bus library.
    #[error("{0}")]
    Dbus(zbus::Error),
    /// No answer within the deadline.
    #[error("no answer from systemd within {0:?}")]
    NoAnswer(Duration),
    /// A job was not removed within the deadline.
    #[error("systemd did not finish the job for {unit} within {within:?}")]
    JobTimeout {
        /// The unit whose job it is.
        unit: String,
        /// How long corral waited.
        within: Duration,
    },
    /// The connection went away while a job was awaited.
    #[error("the connection to systemd was lost")]
    Disconnected,
}

impl From<zbus::Error> for BusError {
    /// D-Bus errors keep their name and message apart, so callers can match the name.
    fn from(e: zbus::Error) -> Self {
        match e {
            zbus::Error::MethodError(name, message, _) => BusError::Method {
                name: name.to_string(),
                message,
            },
            other => BusError::Dbus(other),
        }
    }
}

impl BusError {
    /// True for the error systemd returns for an unknown unit.
    pub fn is_no_such_unit(&self) -> bool {
        matches!(self, BusError::Method { name, .. } if name == NO_SUCH_UNIT)
    }
}

/// A connected, subscribed manager.
pub struct Manager {
    rt: Option<tokio::runtime::Runtime>,
    conn: Connection,
    waiters: Waiters,
    /// System or user manager.
    pub scope: Scope,
    /// The bus address it was reached at.
    pub address: String,
    /// Its `Version` property (e.g. `252.39-1~deb12u2`).
    pub version: String,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("scope", &self.scope)
            .field("address", &self.address)
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
    pub fn wait(self, within: Duration) -> Result<String, BusError> {
        match self.rx.recv_timeout(within) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => Err(BusError::JobTimeout {
                unit: self.unit.clone(),
                within,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(BusError::Disconnected),
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

/// The bus address for `scope`: `$DBUS_SYSTEM_BUS_ADDRESS` or the standard system bus
/// socket; `$DBUS_SESSION_BUS_ADDRESS` or `$XDG_RUNTIME_DIR/bus` (default
/// `/run/user/UID/bus`) for a user.
pub fn address(scope: Scope) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match scope {
        Scope::System => env("DBUS_SYSTEM_BUS_ADDRESS")
            .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".to_string()),
        Scope::User(uid) => env("DBUS_SESSION_BUS_ADDRESS").unwrap_or_else(|| {
            let runtime = env("XDG_RUNTIME_DIR").unwrap_or_else(|| format!("/run/user/{uid}"));
            format!("unix:path={runtime}/bus")
        }),
    }
}

/// The socket path of a `unix:path=` address.
fn socket_path(address: &str) -> Option<PathBuf> {
    address
        .strip_prefix("unix:path=")
        .map(|p| PathBuf::from(p.split(',').next().unwrap_or(p)))
}

impl Manager {
    /// Connects to the manager of `scope`, subscribes to its signals and reads its
    /// version. Fails with every transport tried and why.
    pub fn connect(scope: Scope) -> Result<Manager, BusError> {
        let address = address(scope);
        // No socket: say so without starting anything.
        if let Some(p) = socket_path(&address) {
            if !p.exists() {
                return Err(BusError::NoSocket(p));
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("corral-dbus")
            .enable_all()
            .build()
            .map_err(BusError::Thread)?;
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        let a = address.clone();
        let (tx, rx) = sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(setup(&a, w).await);
        });
        let res = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| BusError::ConnectTimeout(address.clone()))
            .and_then(|r| r);
        match res {
            Ok((conn, version)) => Ok(Manager {
                rt: Some(rt),
                conn,
                waiters,
                scope,
                address,
                version,
            }),
            Err(e) => {
                rt.shutdown_background();
                Err(BusError::Connect {
                    address,
                    error: Box::new(e),
                })
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
        fut: impl Future<Output = Result<T, BusError>> + Send + 'static,
    ) -> Result<T, BusError> {
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the manager");
        let (tx, rx) = sync_channel(1);
        rt.spawn(async move {
            let r = match tokio::time::timeout(within, fut).await {
                Ok(r) => r,
                Err(_) => Err(BusError::NoAnswer(within)),
            };
            let _ = tx.send(r);
        });
        rx.recv_timeout(within + Duration::from_secs(1))
            .map_err(|_| BusError::NoAnswer(within))?
    }

    /// Calls a method of the manager object and returns the reply.
    fn call<B>(
        &self,
        method: &'static str,
        body: B,
        within: Duration,
    ) -> Result<zbus::Message, BusError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType + Send + Sync + 'static,
    {
        let conn = self.conn.clone();
        self.block(within, async move {
            conn.call_method(Some(DEST), PATH, Some(MANAGER), method, &body)
                .await
                .map_err(BusError::from)
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
    ) -> Result<String, BusError> {
        let aux: Vec<(String, Vec<(String, Value<'static>)>)> = Vec::new();
        self.call_job(
            "StartTransientUnit",
            (name.to_string(), "fail".to_string(), props, aux),
        )
    }

    /// `AttachProcessesToUnit(unit, subcgroup, pids)` (systemd ≥ 238).
    pub fn attach_processes(
        &self,
        unit: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> Result<(), BusError> {
        self.call(
            "AttachProcessesToUnit",
            (unit.to_string(), subcgroup.to_string(), pids.to_vec()),
            Duration::from_secs(10),
        )
        .map(drop)
    }

    /// `SetUnitProperties(unit, runtime=true, props)`: changes a running unit.
    pub fn set_unit_properties(
        &self,
        unit: &str,
        props: Vec<(String, Value<'static>)>,
    ) -> Result<(), BusError> {
        self.call(
            "SetUnitProperties",
            (unit.to_string(), true, props),
            Duration::from_secs(10),
        )
        .map(drop)
    }

    /// `StopUnit(unit, "replace")`; returns the job path.
    pub fn stop_unit(&self, unit: &str) -> Result<String, BusError> {
        self.call_job("StopUnit", (unit.to_string(), "replace".to_string()))
    }

    /// A manager method that queues a job: calls it and returns the job's object path.
    fn call_job<B>(&self, method: &'static str, body: B) -> Result<String, BusError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType + Send + Sync + 'static,
    {
        self.call(method, body, Duration::from_secs(10))?
            .body()
            .deserialize::<OwnedObjectPath>()
            .map(|p| p.to_string())
            .map_err(BusError::from)
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

/// Connects, starts the `JobRemoved` dispatcher, subscribes, and reads the version.
async fn setup(address: &str, waiters: Waiters) -> Result<(Connection, String), BusError> {
    let step = |step| {
        move |e: zbus::Error| BusError::Setup {
            step,
            error: Box::new(e.into()),
        }
    };
    let conn = zbus::connection::Builder::address(address)?.build().await?;
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(DEST)
        .and_then(|r| r.interface(MANAGER))
        .and_then(|r| r.member("JobRemoved"))
        .and_then(|r| r.path(PATH))?;
    let stream = MessageStream::for_match_rule(rule.build(), &conn, Some(1024)).await?;
    tokio::spawn(dispatch(stream, waiters));
    conn.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &())
        .await
        .map_err(step("Subscribe"))?;
    let reply = conn
        .call_method(
            Some(DEST),
            PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(MANAGER, "Version"),
        )
        .await
        .map_err(step("reading Version"))?;
    let v: OwnedValue = reply.body().deserialize()?;
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
    fn addresses() {
        assert_eq!(
            socket_path("unix:path=/run/x/bus,guid=00"),
            Some(PathBuf::from("/run/x/bus"))
        );
        assert_eq!(socket_path("unix:abstract=/x"), None);
        assert!(address(Scope::User(4242)).starts_with("unix:"));
    }

    #[test]
    fn dbus_errors_keep_their_name() {
        let e = BusError::Method {
            name: NO_SUCH_UNIT.into(),
            message: Some("Unit corral-x.scope not loaded.".into()),
        };
        assert!(e.is_no_such_unit());
        assert_eq!(
            e.to_string(),
            "org.freedesktop.systemd1.NoSuchUnit: Unit corral-x.scope not loaded."
        );
        let e = BusError::Method {
            name: "org.freedesktop.DBus.Error.AccessDenied".into(),
            message: None,
        };
        assert!(!e.is_no_such_unit());
        assert_eq!(e.to_string(), "org.freedesktop.DBus.Error.AccessDenied");
        assert!(!BusError::Disconnected.is_no_such_unit());
    }
}
