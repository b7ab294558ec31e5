//! The ledger: every submission and every result record, in SQLite.
//!
//! One table, `runs`, one row per accepted submission, written before the service
//! answers 201 and updated at each step: `queued` → `running` (before the run's cgroup
//! is created) → `done` with the `corral.result/v1` record, or `lost` when a restarted
//! service reaps a run that was in flight when its predecessor died. So after any crash
//! every row says what may exist: a `running` row may have a cgroup and processes, a
//! `queued` row has none.
//!
//! The database is in WAL mode with `synchronous=FULL` (a 201 survives a power cut, not
//! only a crash). The schema is versioned with `PRAGMA user_version`; [`migrate`] brings
//! any older file up to date, one transaction per step, and refuses a newer one. A
//! `<ledger>.lock` file holds an exclusive `flock` while a service uses the ledger.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row as SqlRow};

use crate::wire::RunState;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 2;

/// The migrations: entry `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the runs table.
    "CREATE TABLE runs (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL UNIQUE,
        idempotency_key TEXT UNIQUE,
        state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'lost')),
        priority        INTEGER NOT NULL DEFAULT 0,
        request         TEXT NOT NULL,
        profile         TEXT NOT NULL,
        limits          TEXT NOT NULL,
        submitted_at    TEXT NOT NULL,
        started_at      TEXT,
        finished_at     TEXT,
        owner           TEXT,
        reason          TEXT,
        exit_code       INTEGER,
        record          TEXT
    );
    CREATE INDEX runs_by_state ON runs (state, priority DESC, seq);",
    // 1 -> 2: who submitted and who cancelled each run (uids; NULL in rows written
    // before: those are treated as root's).
    "ALTER TABLE runs ADD COLUMN submitted_by INTEGER;
    ALTER TABLE runs ADD COLUMN cancelled_by INTEGER;
    ALTER TABLE runs ADD COLUMN cancelled_at TEXT;
    CREATE INDEX runs_by_submitter ON runs (submitted_by, seq);",
];

/// A ledger error: SQLite's, or one the ledger found itself.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// An SQLite error.
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The ledger's directory cannot be created.
    #[error("ledger: cannot create {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The lock file beside the ledger cannot be opened.
    #[error("ledger: cannot open {}: {source}", lock.display())]
    OpenLock {
        /// The lock file.
        lock: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another service holds the ledger's lock.
    #[error(
        "ledger: {} is in use by another corral service (lock {} is held)",
        path.display(),
        lock.display()
    )]
    InUse {
        /// The ledger.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// `flock` failed for another reason.
    #[error("ledger: cannot lock {}: {errno}", lock.display())]
    Lock {
        /// The lock file.
        lock: PathBuf,
        /// The errno.
        errno: rustix::io::Errno,
    },
    /// SQLite would not use WAL mode.
    #[error("ledger: {}: cannot switch to WAL mode (got {mode})", path.display())]
    NotWal {
        /// The ledger.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was written by a newer corral.
    #[error(
        "ledger: the ledger has schema version {found}, newer than this corral knows \
         ({SCHEMA_VERSION}); use a newer corral or another --ledger"
    )]
    Newer {
        /// The version found.
        found: i32,
    },
    /// The ledger's files cannot be made private (0600).
    #[error("ledger: cannot make {} private (mode 0600): {source}", path.display())]
    Private {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A run to be marked running is not queued.
    #[error("ledger: run {0} is not queued")]
    NotQueued(String),
    /// No row has this id.
    #[error("ledger: no run {0} in the ledger")]
    NoRun(String),
    /// A record cannot be serialized.
    #[error("ledger: cannot serialize the record: {0}")]
    Encode(#[source] serde_json::Error),
}

type Result<T> = std::result::Result<T, LedgerError>;

/// A new submission.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The run id.
    pub id: String,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// The priority.
    pub priority: i64,
    /// The submission as accepted (JSON of [`crate::wire::SubmitRequest`]).
    pub request: String,
    /// The profile the limits started from.
    pub profile: String,
    /// The effective limits (JSON of [`corral_spec::Limits`]), fixed at submission.
    pub limits: String,
    /// When it was accepted.
    pub submitted_at: String,
    /// The uid that submitted it (from the kernel: the socket's peer credentials).
    pub submitted_by: u32,
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Submission order.
    pub seq: i64,
    /// The run id.
    pub id: String,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// The state.
    pub state: RunState,
    /// The priority.
    pub priority: i64,
    /// The submission (JSON).
    pub request: String,
    /// The profile name.
    pub profile: String,
    /// The effective limits (JSON).
    pub limits: String,
    /// When it was accepted.
    pub submitted_at: String,
    /// When it was admitted.
    pub started_at: Option<String>,
    /// When it ended (or was found lost).
    pub finished_at: Option<String>,
    /// The cgroup owner tag (`boot.pid.start`) of the instance that admitted it, or
    /// `slurm:JOBID` once the run was handed to Slurm (the job holds its processes).
    pub owner: Option<String>,
    /// The record's reason.
    pub reason: Option<String>,
    /// The record's exit code.
    pub exit_code: Option<i32>,
    /// The `corral.result/v1` record (JSON).
    pub record: Option<String>,
    /// The uid that submitted it (`None` in rows of schema version 1).
    pub submitted_by: Option<u32>,
    /// The uid that cancelled it through the API, if one did.
    pub cancelled_by: Option<u32>,
    /// When that cancel arrived.
    pub cancelled_at: Option<String>,
}

/// The prefix of a run's `owner` once the run was handed to Slurm: `slurm:JOBID`.
pub const SLURM_OWNER: &str = "slurm:";

impl Row {
    /// The Slurm job id of a run handed to Slurm.
    pub fn slurm_job(&self) -> Option<&str> {
        self.owner.as_deref()?.strip_prefix(SLURM_OWNER)
    }
}

/// The outcome of [`Ledger::insert`].
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// A new row.
    New,
    /// The idempotency key was used before: this is that run.
    Existing(Box<Row>),
    /// Another run already has this id.
    IdTaken,
}

/// The ledger of one service.
#[derive(Debug)]
pub struct Ledger {
    conn: Mutex<Connection>,
    path: PathBuf,
    _lock: Option<File>,
}

const COLUMNS: &str = "seq, id, idempotency_key, state, priority, request, profile, limits, \
                       submitted_at, started_at, finished_at, owner, reason, exit_code, record, \
                       submitted_by, cancelled_by, cancelled_at";

fn row(r: &SqlRow<'_>) -> rusqlite::Result<Row> {
    let state: String = r.get(3)?;
    Ok(Row {
        seq: r.get(0)?,
        id: r.get(1)?,
        idempotency_key: r.get(2)?,
        state: state.parse().map_err(|e: crate::wire::UnknownState| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
        })?,
        priority: r.get(4)?,
        request: r.get(5)?,
        profile: r.get(6)?,
        limits: r.get(7)?,
        submitted_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
        owner: r.get(11)?,
        reason: r.get(12)?,
        exit_code: r.get(13)?,
        record: r.get(14)?,
        submitted_by: r.get(15)?,
        cancelled_by: r.get(16)?,
        cancelled_at: r.get(17)?,
    })
}

/// Brings the database to [`SCHEMA_VERSION`]; returns the version it found. A database
/// from a newer corral is refused rather than damaged.
pub fn migrate(conn: &mut Connection) -> Result<i32> {
    let found: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(LedgerError::Newer { found });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i32)?;
        tx.commit()?;
    }
    Ok(found)
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`, takes its lock, sets WAL mode
    /// and migrates it.
    pub fn open(path: &Path) -> Result<Ledger> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| LedgerError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let lock = lock_file(path)?;
        private_files(path)?;
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::NotWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        // SQLite made the WAL and shared-memory files with the database's mode.
        private_files(path)?;
        Ok(Ledger {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (every write is
        // one statement or one transaction).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The journal mode (`wal`).
    pub fn journal_mode(&self) -> Result<String> {
        Ok(self
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))?)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i32> {
        Ok(self
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Records a new submission as `queued`, unless its idempotency key or id is taken.
    pub fn insert(&self, run: &NewRun) -> Result<Inserted> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(key) = &run.idempotency_key {
            let existing = tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM runs WHERE idempotency_key = ?1"),
                    [key],
                    row,
                )
                .optional()?;
            if let Some(r) = existing {
                return Ok(Inserted::Existing(Box::new(r)));
            }
        }
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?1)",
            [&run.id],
            |r| r.get(0),
        )?;
        if taken {
            return Ok(Inserted::IdTaken);
        }
        tx.execute(
            "INSERT INTO runs (id, idempotency_key, state, priority, request, profile, limits,
                               submitted_at, submitted_by)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run.id,
                run.idempotency_key,
                run.priority,
                run.request,
                run.profile,
                run.limits,
                run.submitted_at,
                run.submitted_by
            ],
        )?;
        tx.commit()?;
        Ok(Inserted::New)
    }

    /// Marks a queued run as admitted, before anything is created for it.
    pub fn mark_running(&self, id: &str, started_at: &str, owner: &str) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE runs SET state = 'running', started_at = ?2, owner = ?3
             WHERE id = ?1 AND state = 'queued'",
            params![id, started_at, owner],
        )?;
        if n != 1 {
            return Err(LedgerError::NotQueued(id.to_string()));
        }
        Ok(())
    }

    /// Says who holds a running run's processes now (`slurm:JOBID` once `sbatch`
    /// took it), before anyone can ask about the job.
    pub fn set_owner(&self, id: &str, owner: &str) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE runs SET owner = ?2 WHERE id = ?1 AND state = 'running'",
            params![id, owner],
        )?;
        if n != 1 {
            return Err(LedgerError::NoRun(id.to_string()));
        }
        Ok(())
    }

    /// Stores a run's final state (`done` or `lost`) and its record.
    pub fn finish(&self, id: &str, state: RunState, record: &corral_record::Record) -> Result<()> {
        debug_assert!(state.is_final());
        let json = serde_json::to_string(record).map_err(LedgerError::Encode)?;
        let n = self.conn().execute(
            "UPDATE runs SET state = ?2, finished_at = ?3, reason = ?4, exit_code = ?5,
                             record = ?6, started_at = COALESCE(started_at, ?7)
             WHERE id = ?1",
            params![
                id,
                state.as_str(),
                record.finished_at,
                record.outcome.reason.as_str(),
                record.outcome.exit_code,
                json,
                record.started_at
            ],
        )?;
        if n != 1 {
            return Err(LedgerError::NoRun(id.to_string()));
        }
        Ok(())
    }

    /// Records who cancelled a run and when, the first time a cancel arrives while
    /// it is queued or running. Returns whether the row was updated.
    pub fn mark_cancelled(&self, id: &str, by: u32, at: &str) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE runs SET cancelled_by = ?2, cancelled_at = ?3
             WHERE id = ?1 AND cancelled_by IS NULL AND state IN ('queued', 'running')",
            params![id, by, at],
        )?;
        Ok(n == 1)
    }

    /// One run.
    pub fn get(&self, id: &str) -> Result<Option<Row>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"),
                [id],
                row,
            )
            .optional()?)
    }

    /// The last `limit` runs (in `state`, if given; submitted by `by`, if given; rows
    /// without a submitter count as root's), oldest first.
    pub fn list(&self, state: Option<RunState>, by: Option<u32>, limit: usize) -> Result<Vec<Row>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM runs WHERE (?1 IS NULL OR state = ?1)
                              AND (?3 IS NULL OR COALESCE(submitted_by, 0) = ?3)
                            ORDER BY seq DESC LIMIT ?2)
             ORDER BY seq"
        ))?;
        let rows = st
            .query_map(params![state.map(|s| s.as_str()), limit as i64, by], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Every run in `state`, in admission order (priority, then submission).
    pub fn in_state(&self, state: RunState) -> Result<Vec<Row>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM runs WHERE state = ?1 ORDER BY priority DESC, seq"
        ))?;
        let rows = st
            .query_map([state.as_str()], row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// How many runs are in each state.
    pub fn count_by_state(&self) -> Result<Vec<(String, u64)>> {
        self.counts("SELECT state, COUNT(*) FROM runs GROUP BY state")
    }

    /// How many final runs ended for each reason.
    pub fn count_by_reason(&self) -> Result<Vec<(String, u64)>> {
        self.counts("SELECT reason, COUNT(*) FROM runs WHERE reason IS NOT NULL GROUP BY reason")
    }

    fn counts(&self, sql: &str) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(sql)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// The ledger holds every submitted environment: it and its WAL, shared-memory and
/// lock files are the service's alone (0600), whatever the umask, and so is a ledger
/// file an older corral created 0644. SQLite creates the WAL and `-shm` files with the
/// database file's mode, so the database is created here first, 0600.
fn private_files(path: &Path) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| LedgerError::Private { path: p, source }
    };
    if !path.exists() {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
    }
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let p = PathBuf::from(name);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(())
}

fn lock_file(path: &Path) -> Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lp = PathBuf::from(name);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lp)
        .map_err(|source| LedgerError::OpenLock {
            lock: lp.clone(),
            source,
        })?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LedgerError::InUse {
            path: path.to_path_buf(),
            lock: lp,
        }),
        Err(errno) => Err(LedgerError::Lock { lock: lp, errno }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_record::Reason;

    fn new_run(id: &str, key: Option<&str>, prio: i64) -> NewRun {
        NewRun {
            id: id.into(),
            idempotency_key: key.map(str::to_string),
            priority: prio,
            request: "{}".into(),
            profile: "default".into(),
            limits: "{}".into(),
            submitted_at: "2026-01-01T00:00:00.000Z".into(),
            submitted_by: 1000,
        }
    }

    fn record(id: &str, reason: Reason, code: i32) -> corral_record::Record {
        let mut rec = corral_record::Record::new(corral_record::RecordHead {
            id: id.into(),
            command: vec!["true".into()],
            cwd: None,
            profile: "default".into(),
            backend: "cgroup1".into(),
            backend_reason: String::new(),
            limits: Default::default(),
        });
        rec.outcome.reason = reason;
        rec.outcome.exit_code = code;
        rec
    }

    #[test]
    fn migration_from_empty() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c).unwrap(), 0);
        let v: i32 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // Idempotent: a second run finds the current version and changes nothing.
        assert_eq!(migrate(&mut c).unwrap(), SCHEMA_VERSION);
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // A newer database is refused.
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let e = migrate(&mut c).unwrap_err();
        assert!(
            matches!(e, LedgerError::Newer { found } if found == SCHEMA_VERSION + 1),
            "{e}"
        );
        let e = e.to_string();
        assert!(e.contains("newer than this corral"), "{e}");
    }

    #[test]
    fn wal_reopen_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("ledger.db");
        {
            let l = Ledger::open(&p).unwrap();
            assert_eq!(l.journal_mode().unwrap(), "wal");
            assert_eq!(l.schema_version().unwrap(), SCHEMA_VERSION);
            assert_eq!(l.insert(&new_run("a", None, 0)).unwrap(), Inserted::New);
            assert_eq!(
                l.insert(&new_run("b", Some("k"), 5)).unwrap(),
                Inserted::New
            );
            l.mark_running("b", "2026-01-01T00:00:01.000Z", "owner")
                .unwrap();
            l.finish("b", RunState::Done, &record("b", Reason::Exited, 0))
                .unwrap();
            // A second service cannot use the same ledger.
            let e = Ledger::open(&p).unwrap_err();
            assert!(
                matches!(&e, LedgerError::InUse { path, .. } if path == &p),
                "{e}"
            );
            let e = e.to_string();
            assert!(e.contains("in use by another corral service"), "{e}");
        }
        let l = Ledger::open(&p).unwrap();
        assert_eq!(l.journal_mode().unwrap(), "wal");
        let a = l.get("a").unwrap().unwrap();
        assert_eq!(a.state, RunState::Queued);
        let b = l.get("b").unwrap().unwrap();
        assert_eq!(b.state, RunState::Done);
        assert_eq!(b.reason.as_deref(), Some("exited"));
        let rec: corral_record::Record = serde_json::from_str(b.record.as_ref().unwrap()).unwrap();
        assert_eq!(rec.id, "b");
        assert!(l.get("c").unwrap().is_none());
    }

    #[test]
    fn ids_keys_order_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.db")).unwrap();
        l.insert(&new_run("low", None, 0)).unwrap();
        l.insert(&new_run("high", Some("key"), 9)).unwrap();
        l.insert(&new_run("low2", None, 0)).unwrap();
        assert_eq!(
            l.insert(&new_run("low", None, 0)).unwrap(),
            Inserted::IdTaken
        );
        match l.insert(&new_run("other", Some("key"), 0)).unwrap() {
            Inserted::Existing(r) => assert_eq!(r.id, "high"),
            other => panic!("{other:?}"),
        }
        let q: Vec<String> = l
            .in_state(RunState::Queued)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(q, ["high", "low", "low2"]);
        assert!(l.mark_running("low", "t", "o").is_ok());
        assert!(l.mark_running("low", "t", "o").is_err(), "only once");
        assert!(matches!(
            l.mark_running("low", "t", "o"),
            Err(LedgerError::NotQueued(id)) if id == "low"
        ));
        l.finish("low", RunState::Lost, &record("low", Reason::Lost, 125))
            .unwrap();
        let by_state = l.count_by_state().unwrap();
        assert!(by_state.contains(&("queued".into(), 2)));
        assert!(by_state.contains(&("lost".into(), 1)));
        assert_eq!(l.count_by_reason().unwrap(), vec![("lost".into(), 1)]);
        let last2: Vec<String> = l
            .list(None, None, 2)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(last2, ["high", "low2"]);
        assert_eq!(l.list(Some(RunState::Lost), None, 10).unwrap().len(), 1);
    }

    /// Who submitted and who cancelled, and a list of one submitter's runs.
    #[test]
    fn submitters_and_cancels() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("l.db")).unwrap();
        l.insert(&new_run("a", None, 0)).unwrap();
        l.insert(&NewRun {
            submitted_by: 1001,
            ..new_run("b", None, 0)
        })
        .unwrap();
        let ids = |by| -> Vec<String> {
            l.list(None, by, 10)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids(None), ["a", "b"]);
        assert_eq!(ids(Some(1000)), ["a"]);
        assert_eq!(ids(Some(1001)), ["b"]);
        assert!(ids(Some(0)).is_empty());
        let a = l.get("a").unwrap().unwrap();
        assert_eq!((a.submitted_by, a.cancelled_by), (Some(1000), None));
        assert!(l
            .mark_cancelled("a", 0, "2026-01-01T00:00:02.000Z")
            .unwrap());
        assert!(
            !l.mark_cancelled("a", 5, "later").unwrap(),
            "the first cancel stays"
        );
        let a = l.get("a").unwrap().unwrap();
        assert_eq!(a.cancelled_by, Some(0));
        assert_eq!(a.cancelled_at.as_deref(), Some("2026-01-01T00:00:02.000Z"));
        l.finish("b", RunState::Done, &record("b", Reason::Exited, 0))
            .unwrap();
        assert!(
            !l.mark_cancelled("b", 0, "t").unwrap(),
            "finished: nothing to cancel"
        );
    }

    /// A version 1 ledger (before submitters were recorded) opens, keeps its rows, and
    /// they count as root's.
    #[test]
    fn migration_from_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        {
            let mut c = Connection::open(&p).unwrap();
            let tx = c.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0]).unwrap();
            tx.pragma_update(None, "user_version", 1).unwrap();
            tx.execute(
                "INSERT INTO runs (id, state, request, profile, limits, submitted_at)
                 VALUES ('old', 'queued', '{}', 'default', '{}', 't')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let l = Ledger::open(&p).unwrap();
        assert_eq!(l.schema_version().unwrap(), 2);
        let old = l.get("old").unwrap().unwrap();
        assert_eq!((old.submitted_by, old.cancelled_by), (None, None));
        assert_eq!(l.list(None, Some(0), 10).unwrap().len(), 1);
        assert!(l.list(None, Some(1000), 10).unwrap().is_empty());
    }

    /// The ledger and its side files are 0600 whatever the umask, a directory it
    /// creates 0700, and an old world-readable ledger is made private when opened.
    #[test]
    fn files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let old = unsafe { libc::umask(0o022) };
        let p = dir.path().join("state").join("ledger.db");
        let l = Ledger::open(&p).unwrap();
        l.insert(&new_run("a", None, 0)).unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        for side in ["ledger.db-wal", "ledger.db-shm", "ledger.db.lock"] {
            assert_eq!(mode(&dir.path().join("state").join(side)), 0o600, "{side}");
        }
        drop(l);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _l = Ledger::open(&p).unwrap();
        unsafe { libc::umask(old) };
        assert_eq!(mode(&p), 0o600);
    }
}
