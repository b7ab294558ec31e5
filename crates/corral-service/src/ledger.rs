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
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row as SqlRow};

use crate::wire::RunState;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 1;

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
];

/// A ledger error: SQLite's, or one the ledger found itself.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// An SQLite error.
    #[error("ledger: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Anything else (file access, locking, a newer schema, bad content).
    #[error("ledger: {0}")]
    Other(String),
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
    /// The cgroup owner tag (`boot.pid.start`) of the instance that admitted it.
    pub owner: Option<String>,
    /// The record's reason.
    pub reason: Option<String>,
    /// The record's exit code.
    pub exit_code: Option<i32>,
    /// The `corral.result/v1` record (JSON).
    pub record: Option<String>,
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
                       submitted_at, started_at, finished_at, owner, reason, exit_code, record";

fn row(r: &SqlRow<'_>) -> rusqlite::Result<Row> {
    let state: String = r.get(3)?;
    Ok(Row {
        seq: r.get(0)?,
        id: r.get(1)?,
        idempotency_key: r.get(2)?,
        state: state.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
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
    })
}

/// Brings the database to [`SCHEMA_VERSION`]; returns the version it found. A database
/// from a newer corral is refused rather than damaged.
pub fn migrate(conn: &mut Connection) -> Result<i32> {
    let found: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(LedgerError::Other(format!(
            "the ledger has schema version {found}, newer than this corral knows \
             ({SCHEMA_VERSION}); use a newer corral or another --ledger"
        )));
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
            std::fs::create_dir_all(dir)
                .map_err(|e| LedgerError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock = lock_file(path)?;
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::Other(format!(
                "{}: cannot switch to WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
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
                               submitted_at)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7)",
            params![
                run.id,
                run.idempotency_key,
                run.priority,
                run.request,
                run.profile,
                run.limits,
                run.submitted_at
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
            return Err(LedgerError::Other(format!("run {id} is not queued")));
        }
        Ok(())
    }

    /// Stores a run's final state (`done` or `lost`) and its record.
    pub fn finish(&self, id: &str, state: RunState, record: &corral_record::Record) -> Result<()> {
        debug_assert!(state.is_final());
        let json = serde_json::to_string(record)
            .map_err(|e| LedgerError::Other(format!("cannot serialize the record: {e}")))?;
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
            return Err(LedgerError::Other(format!("no run {id} in the ledger")));
        }
        Ok(())
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

    /// The last `limit` runs (in `state`, if given), oldest first.
    pub fn list(&self, state: Option<RunState>, limit: usize) -> Result<Vec<Row>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT * FROM (SELECT {COLUMNS} FROM runs WHERE (?1 IS NULL OR state = ?1)
                            ORDER BY seq DESC LIMIT ?2)
             ORDER BY seq"
        ))?;
        let rows = st
            .query_map(params![state.map(|s| s.as_str()), limit as i64], row)?
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

fn lock_file(path: &Path) -> Result<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lp = PathBuf::from(name);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lp)
        .map_err(|e| LedgerError::Other(format!("cannot open {}: {e}", lp.display())))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LedgerError::Other(format!(
            "{} is in use by another corral service (lock {} is held)",
            path.display(),
            lp.display()
        ))),
        Err(e) => Err(LedgerError::Other(format!(
            "cannot lock {}: {e}",
            lp.display()
        ))),
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
        }
    }

    fn record(id: &str, reason: Reason, code: i32) -> corral_record::Record {
        let mut v = serde_json::json!({
            "schema": corral_record::SCHEMA, "id": id, "command": ["true"], "cwd": null,
            "profile": "default", "backend": "cgroup1", "backend_reason": "",
            "cgroup": null,
            "limits": {"requested": {}, "enforced": {}, "not_enforced": [], "grace_s": 5.0},
            "outcome": {"reason": reason.as_str(), "exit_code": code, "signal": null,
                        "process_exit_code": null},
            "events": {"oom_kill": 0, "pids_max": 0, "cpu_throttled": 0,
                       "cpu_throttled_us": 0, "memory_max": 0, "leftover_killed": 0,
                       "grace_expired": false},
            "usage": {"wall_s": 0.0, "cpu_user_s": 0.0, "cpu_system_s": 0.0,
                      "memory_peak_bytes": null, "pids_peak": null, "io_read_bytes": null,
                      "io_write_bytes": null},
            "started_at": "2026-01-01T00:00:01.000Z",
            "finished_at": "2026-01-01T00:00:02.000Z", "notes": "", "corral_version": "0"
        });
        for k in corral_spec::LimitKind::ENFORCEABLE.map(|k| k.as_str()) {
            v["limits"]["requested"][k] = serde_json::Value::Null;
            v["limits"]["enforced"][k] = serde_json::Value::Null;
        }
        serde_json::from_value(v).unwrap()
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
        let e = migrate(&mut c).unwrap_err().to_string();
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
            let e = Ledger::open(&p).unwrap_err().to_string();
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
        l.finish("low", RunState::Lost, &record("low", Reason::Lost, 125))
            .unwrap();
        let by_state = l.count_by_state().unwrap();
        assert!(by_state.contains(&("queued".into(), 2)));
        assert!(by_state.contains(&("lost".into(), 1)));
        assert_eq!(l.count_by_reason().unwrap(), vec![("lost".into(), 1)]);
        let last2: Vec<String> = l.list(None, 2).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(last2, ["high", "low2"]);
        assert_eq!(l.list(Some(RunState::Lost), 10).unwrap().len(), 1);
    }
}
