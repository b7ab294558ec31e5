//! One run from spec to record.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use corral_record::{
    classify, compose_notes, reports_out_of_memory, Events, Evidence, LimitsRecord, Outcome,
    Output, Record, RecordHead, Usage,
};
use corral_spec::Limits;
use tokio::sync::watch;

use crate::backend::{Backend, BackendError, BackendKind, Plan};
use crate::ident::{cgroup_name, new_run_id, validate_id, InvalidId, Owner};
use crate::output::{self, OutputFile};
use crate::spawn::{self, ChildSetup, Exec, SpawnError};
use crate::supervise::supervise;
pub use crate::supervise::{Cancel, Observer, Progress};

/// Where a standard stream of the run goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stdio {
    /// corral's own stream.
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// A file, created or truncated (for stdin: opened for reading).
    File(PathBuf),
}

/// Everything one run needs.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// A caller-chosen id (1-64 of `[A-Za-z0-9_-]`); generated when `None`.
    pub id: Option<String>,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The working directory (corral's own when `None`).
    pub cwd: Option<PathBuf>,
    /// Environment variables to set (on top of corral's unless `clear_env`).
    pub env: Vec<(String, String)>,
    /// Start from an empty environment.
    pub clear_env: bool,
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
    /// The profile name the limits came from (for the record).
    pub profile: String,
    /// The effective limits.
    pub limits: Limits,
    /// Record a timeline (the record's `timeline`) read every this often; `None`: no
    /// timeline.
    pub timeline: Option<std::time::Duration>,
}

/// A run that could not be attempted: corral's own failure or a refusal (exit 125).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--require-isolation` and some requested limit cannot be enforced.
    #[error(
        "refusing to run: isolation is required but the {} backend cannot enforce: {}",
        .backend.as_str(),
        .gaps.iter().map(|g| format!("{} ({})", g.limit, g.why)).collect::<Vec<_>>().join("; ")
    )]
    Refused {
        /// The backend.
        backend: BackendKind,
        /// The limits it cannot enforce, and why.
        gaps: Vec<corral_record::Gap>,
    },
    /// `--require-isolation` and an isolation layer cannot be applied on this host.
    #[error(
        "refusing to run: isolation is required but this host cannot apply: {}",
        .gaps.iter().map(|g| format!("{} ({})", g.layer, g.why)).collect::<Vec<_>>().join("; ")
    )]
    IsolationRefused {
        /// The layers that cannot be applied, and why.
        gaps: Vec<corral_record::IsolationGap>,
    },
    /// The run's identity cannot be what was asked (`--user`), or no dynamic uid is
    /// free.
    #[error("{0}")]
    Identity(crate::identity::IdentityError),
    /// The backend failed to create the run's isolation.
    #[error("{0}")]
    Backend(BackendError),
    /// The caller's run id is not valid.
    #[error("{0}")]
    InvalidId(InvalidId),
    /// The spec has no command.
    #[error("no command given")]
    NoCommand,
    /// The command could not be started.
    #[error("{0}")]
    Spawn(SpawnError),
    /// Supervision failed (an OS error while the run was in flight).
    #[error("supervising the run: {0}")]
    Supervise(std::io::Error),
}

// By hand rather than `#[from]`, which would also make each cause the `source()`: the
// messages above already name it, and corral prints error chains joined.
impl From<BackendError> for RunError {
    fn from(e: BackendError) -> Self {
        RunError::Backend(e)
    }
}

impl From<crate::identity::IdentityError> for RunError {
    fn from(e: crate::identity::IdentityError) -> Self {
        RunError::Identity(e)
    }
}

impl From<InvalidId> for RunError {
    fn from(e: InvalidId) -> Self {
        RunError::InvalidId(e)
    }
}

impl From<SpawnError> for RunError {
    fn from(e: SpawnError) -> Self {
        RunError::Spawn(e)
    }
}

impl From<std::io::Error> for RunError {
    fn from(e: std::io::Error) -> Self {
        RunError::Supervise(e)
    }
}

/// Checks that `--require-isolation` can be honoured, for the limits and the
/// isolation layers; returns the backend's plan.
pub fn check_isolation(backend: &dyn Backend, limits: &Limits) -> Result<Plan, RunError> {
    // An unknown user, or another user asked by an ordinary one, is refused first.
    crate::identity::decide(
        &limits.user,
        limits.isolation,
        crate::identity::Caller::current(),
        &crate::identity::SystemDirectory,
    )?;
    let plan = backend.plan(limits);
    if limits.require_isolation && !plan.gaps.is_empty() {
        return Err(RunError::Refused {
            backend: backend.kind(),
            gaps: plan.gaps,
        });
    }
    let iso = crate::isolation::plan(limits);
    if limits.require_isolation && !iso.record.not_enforced.is_empty() {
        return Err(RunError::IsolationRefused {
            gaps: iso.record.not_enforced,
        });
    }
    Ok(plan)
}

struct Outputs {
    stdout: Option<OutputFile>,
    stderr: Option<OutputFile>,
}

impl Outputs {
    fn finish(self) -> Option<Output> {
        if self.stdout.is_none() && self.stderr.is_none() {
            return None;
        }
        Some(Output {
            stdout: self.stdout.map(OutputFile::finish),
            stderr: self.stderr.map(OutputFile::finish),
        })
    }
}

fn open_stdio(
    s: &Stdio,
    input: bool,
    cap: Option<u64>,
) -> std::io::Result<(Option<OwnedFd>, Option<OutputFile>)> {
    match s {
        Stdio::Inherit => Ok((None, None)),
        Stdio::Null => {
            let f = std::fs::OpenOptions::new()
                .read(input)
                .write(!input)
                .open("/dev/null")?;
            Ok((Some(f.into()), None))
        }
        Stdio::File(p) if input => Ok((Some(std::fs::File::open(p)?.into()), None)),
        Stdio::File(p) => {
            let (fd, out) = output::open(p, cap)?;
            Ok((Some(fd), Some(out)))
        }
    }
}

/// Runs `spec` with `backend` until its whole process tree is gone, and returns its
/// record. A command that cannot start gives a record with reason `spawn_failed`
/// (nothing is created for it); only corral's own failures are errors.
pub async fn run(
    backend: &dyn Backend,
    spec: RunSpec,
    cancel: watch::Receiver<Option<Cancel>>,
) -> Result<Record, RunError> {
    run_observed(backend, spec, cancel, None).await
}

/// [`run()`], with `observer` called on its timer with what the run uses while it
/// runs (read from the sandbox's counters).
pub async fn run_observed(
    backend: &dyn Backend,
    mut spec: RunSpec,
    cancel: watch::Receiver<Option<Cancel>>,
    mut observer: Option<Observer>,
) -> Result<Record, RunError> {
    let id = match &spec.id {
        Some(id) => {
            validate_id(id)?;
            id.clone()
        }
        None => new_run_id(),
    };
    if spec.command.is_empty() {
        return Err(RunError::NoCommand);
    }
    // Relative `rw` paths are relative to the run's working directory.
    let run_cwd = spec
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    crate::fsview::absolute_rw(&mut spec.limits, &run_cwd);
    let plan = check_isolation(backend, &spec.limits)?;
    let mut rec = base_record(backend, &spec, &id, &plan);
    let iso = crate::isolation::plan(&spec.limits);
    rec.isolation = Some(iso.record.clone());

    // Everything that can fail on bad input is checked before the cgroup exists.
    let env = effective_env(&spec);
    if let Some(cwd) = &spec.cwd {
        if !cwd.is_dir() {
            let why = format!(
                "working directory {} does not exist or is not a directory",
                cwd.display()
            );
            return Ok(spawn_failed(rec, 125, why));
        }
    }
    // The disks the I/O limits apply to: a bad --io-device is bad input.
    let io_targets = if crate::disk::wants_io(&spec.limits) {
        match crate::disk::targets(std::path::Path::new("/sys"), &spec.limits, &run_cwd) {
            Ok(t) => Some(t),
            Err(e) => return Ok(spawn_failed(rec, 125, e.to_string())),
        }
    } else {
        None
    };
    let fs_paths = match crate::fsview::resolve(&spec.limits, iso.fs, &run_cwd) {
        Ok(p) => p,
        Err(e) => return Ok(spawn_failed(rec, 125, e.to_string())),
    };
    // `--fs host` without hidden paths mounts nothing: no mount namespace for it.
    let fs_view = iso
        .fs
        .map(|mode| crate::fsview::layout(mode, &fs_paths))
        .filter(|v| v.read_only || !v.steps.is_empty());
    if let (Some(mode), Some(i)) = (iso.fs, rec.isolation.as_mut()) {
        i.enforced.fs = Some(crate::fsview::enforced(mode, &fs_paths));
    }
    // The view's second layer: a Landlock ruleset keeps writes to the same paths.
    let write_rules = match iso.landlock {
        Some(abi) if fs_view.as_ref().is_some_and(|v| v.read_only) => {
            match spawn::WriteRules::build(abi) {
                Ok(r) => Some(r),
                Err(why) => return Ok(spawn_failed(rec, 125, why)),
            }
        }
        _ => None,
    };
    let env = {
        let mut env = env;
        if iso.fs == Some(corral_spec::FsMode::ReadOnly) {
            crate::fsview::adjust_env(&mut env, &spec.env, spec.clear_env);
        }
        env
    };
    // In a view the child changes into the working directory after its mounts: the
    // one it inherits would still be the host's (read-only) one.
    let exec_cwd = match &fs_view {
        Some(_) => Some(run_cwd.as_path()),
        None => spec.cwd.as_deref(),
    };
    let exec = match Exec::new(&spec.command, &env, exec_cwd) {
        Ok(e) => e,
        Err(e) => return Ok(spawn_failed(rec, e.exit_code(), e.to_string())),
    };
    // Who the command runs as; a dynamic uid is held from here until this function
    // returns, after the files the run created got their owner back (`owner`).
    let mut who = crate::identity::plan(&spec.limits.user, spec.limits.isolation)?;
    let owned = match (&mut who.identity, who.lease.is_some()) {
        (Some(id), true) => {
            let range = crate::identity::UidRange::from_env()?;
            // The working directory and each `--rw` directory keep their owners.
            let mut dirs = crate::identity::owned_dirs(spec.cwd.as_deref());
            for p in &spec.limits.rw {
                match p.canonicalize() {
                    Ok(c) if c.is_dir() && !dirs.contains(&c) => dirs.push(c),
                    _ => {}
                }
            }
            // Parents first: each id-mapped mount is moved over its directory in this
            // order, so one inside another (a working directory inside an `--rw` path)
            // lies on top with its own owner's mapping.
            dirs.sort_by_key(|d| d.components().count());
            let owned = crate::owner::prepare(&dirs, id.uid, range.run_group());
            if owned.needs_run_group() {
                id.groups.push(range.run_group());
            }
            who.record.files = owned
                .mode()
                .unwrap_or(crate::owner::FilesMode::NotWritable)
                .as_str()
                .into();
            Some(owned)
        }
        _ => None,
    };
    if let Some(iso) = rec.isolation.as_mut() {
        iso.enforced.user = Some(who.record.clone());
        iso.enforced.capabilities = Some(who.capabilities.clone());
    }
    // Dropped in this order when the run is over: leftover processes of a dynamic uid
    // (the rlimit backend cannot contain them), the files, then the uid.
    let reaper = crate::identity::Reaper(
        who.lease
            .as_ref()
            .filter(|_| backend.kind() == BackendKind::Rlimit)
            .map(|l| l.uid),
    );
    let held = (reaper, owned, who.lease);
    // The child must enter the id-mapped mount, not stay in the directory beneath it
    // that it inherits: it changes into its working directory by path. And a command
    // found on PATH must be one the run's user can reach (not a shim under /root).
    let exec = match (&held.1, &spec.cwd, &who.identity) {
        (Some(o), None, _) if !o.trees.is_empty() => {
            let cwd = crate::identity::owned_dirs(None);
            let cwd = cwd.first().map(|p| p.as_path());
            match Exec::new_as(&spec.command, &env, cwd, who.identity.as_ref()) {
                Ok(e) => e,
                Err(e) => return Ok(spawn_failed(rec, e.exit_code(), e.to_string())),
            }
        }
        (_, _, Some(id)) => match Exec::new_as(&spec.command, &env, exec_cwd, Some(id)) {
            Ok(e) => e,
            Err(e) => return Ok(spawn_failed(rec, e.exit_code(), e.to_string())),
        },
        _ => exec,
    };
    let cap = spec.limits.output_limit;
    let stdio = (|| {
        Ok::<_, std::io::Error>((
            open_stdio(&spec.stdin, true, None)?,
            open_stdio(&spec.stdout, false, cap)?,
            open_stdio(&spec.stderr, false, cap)?,
        ))
    })();
    let ((in_fd, _), (out_fd, out_file), (err_fd, err_file)) = match stdio {
        Ok(v) => v,
        Err(e) => {
            return Ok(spawn_failed(
                rec,
                125,
                format!("cannot open a standard stream: {e}"),
            ))
        }
    };
    let outputs = Outputs {
        stdout: out_file,
        stderr: err_file,
    };

    let name = cgroup_name(&id, &Owner::current());
    let mut sandbox = backend.create(&name, &spec.limits)?;
    let mut guarded = crate::guard::get().zip(sandbox.guard_entry());
    if let Some((g, e)) = &guarded {
        g.register(e);
    }
    rec.cgroup = sandbox.cgroup();
    let mut plan = sandbox.plan();
    let gaps_before = plan.gaps.len();
    if let Some(t) = &io_targets {
        let applied = crate::disk::apply(
            backend.kind() == BackendKind::Cgroup1,
            sandbox.as_mut(),
            &spec.limits,
            t,
            &mut plan,
        );
        if let Err(e) = applied {
            teardown(sandbox, &guarded);
            return Err(e.into());
        }
    }
    let quota = crate::quota::start(&spec.limits, &run_cwd, &mut plan);
    if spec.limits.require_isolation && plan.gaps.len() > gaps_before {
        let gaps = plan.gaps.split_off(gaps_before);
        drop(quota);
        teardown(sandbox, &guarded);
        return Err(RunError::Refused {
            backend: backend.kind(),
            gaps,
        });
    }
    rec.limits.enforced = plan.enforced;
    rec.limits.not_enforced = plan.gaps;

    let mut setup = ChildSetup {
        stdin: in_fd.as_ref().map(|f| f.as_fd()),
        stdout: out_fd.as_ref().map(|f| f.as_fd()),
        stderr: err_fd.as_ref().map(|f| f.as_fd()),
        parent_death_signal: Some(libc::SIGKILL),
        new_session: iso.record.enforced.new_session,
        no_core_dumps: !iso.record.enforced.core_dumps,
        no_new_privs: iso.record.enforced.no_new_privs,
        syscall_filter: iso.filter,
        new_network: iso.new_network,
        new_mount_namespace: fs_view.is_some(),
        fs_view,
        write_rules: write_rules.as_ref(),
        identity: who.identity.clone(),
        owned_trees: held
            .1
            .iter()
            .flat_map(|o| o.trees.iter().map(|(fd, p)| (fd.as_fd(), p.clone())))
            .collect(),
        ..Default::default()
    };
    if !setup.owned_trees.is_empty() {
        setup.new_mount_namespace = true;
    }
    // The pid namespace: born pid 1 of it, a fresh /proc in a private mount namespace.
    setup.pid_namespace = iso.pid_ns;
    setup.new_mount_namespace |= iso.pid_ns;
    // An ordinary user's layers: through its own user namespace.
    setup.user_namespace = iso.user_ns;
    sandbox.child_setup(&mut setup);
    // The largest file, on every backend: RLIMIT_FSIZE (SIGXFSZ, then EFBIG).
    if let Some(n) = spec.limits.file_size {
        setup.rlimits.push(spawn::Rlimit {
            resource: libc::RLIMIT_FSIZE,
            soft: n,
            hard: n,
        });
    }
    // A backend may need a step the isolation plan left out (the rlimit backend's
    // setsid): the record says what the child does.
    if let Some(iso) = rec.isolation.as_mut() {
        iso.enforced.new_session = setup.new_session;
    }
    let spawned = spawn::spawn(&exec, &setup, &sandbox.placement());
    // With a pid namespace the supervised pid is the mini-init; the command's own
    // status comes from this pipe.
    let (spawned, main_status) = match spawned {
        Ok(mut s) => {
            let m = s.main_status.take();
            (Ok(s), m)
        }
        Err(e) => (Err(e), None),
    };
    drop(setup);
    drop((in_fd, out_fd, err_fd));
    let confirmed = match spawned {
        Ok(s) => {
            let pid = s.pid;
            match sandbox.after_spawn(pid) {
                Ok(()) => {
                    // Backends that know their tree only now (a process group) register late.
                    if guarded.is_none() {
                        if let (Some(g), Some(e)) = (crate::guard::get(), sandbox.guard_entry()) {
                            g.register(&e);
                            guarded = Some((g, e));
                        }
                    }
                    s.confirm(&exec)
                }
                Err(e) => {
                    let _ =
                        rustix::process::pidfd_send_signal(&s.pidfd, rustix::process::Signal::KILL);
                    let _ = s.confirm(&exec);
                    teardown(sandbox, &guarded);
                    return Err(e.into());
                }
            }
        }
        Err(e) => Err(e),
    };
    // The analysis' clock starts when its command runs: placing the child (and on v1 its
    // mount namespace) is corral's cost, not the analysis' wall-clock budget.
    let started_at = SystemTime::now();
    let started = Instant::now();
    let pidfd = match confirmed {
        Ok((_pid, pidfd, _)) => pidfd,
        Err(e) => {
            let code = e.exit_code();
            let why = e.to_string();
            drop(outputs.finish());
            teardown(sandbox, &guarded);
            return Ok(spawn_failed(rec, code, why));
        }
    };

    let mut recorder = spec
        .timeline
        .map(|every| crate::timeline::Recorder::new(every, started));
    let sup = supervise(
        sandbox.as_mut(),
        pidfd,
        main_status,
        &spec.limits,
        started,
        cancel,
        observer.as_mut(),
        recorder.as_mut(),
    )
    .await;
    let sup = match sup {
        Ok(s) => s,
        Err(e) => {
            let _ = sandbox.kill_all();
            teardown(sandbox, &guarded);
            return Err(e.into());
        }
    };
    let c = sandbox.collect();
    teardown(sandbox, &guarded);
    let disk = quota.map(crate::quota::Quota::finish);
    let finished_at = SystemTime::now();
    rec.output = outputs.finish();
    let rlimit = backend.kind() == crate::backend::BackendKind::Rlimit;
    let verdict = classify(&Evidence {
        status: Some(sup.status),
        spawn_error: None,
        kill: sup.kill,
        oom_kills_at_kill: sup.oom_at_kill,
        oom_kills: c.oom_kill,
        cpu_rlimit_hit: rlimit && spec.limits.cpu_time.is_some(),
        file_size_limit: spec.limits.file_size.is_some(),
        disk_full: disk.as_ref().is_some_and(|d| d.full),
        file_at_limit: match (sup.status, spec.limits.file_size) {
            (corral_record::WaitStatus::Exited(c), Some(n)) if c != 0 => {
                let mut dirs = vec![run_cwd.clone()];
                dirs.extend(spec.limits.rw.iter().cloned());
                // mtimes come from a coarse clock (a tick): a little before counts.
                let since = started_at - std::time::Duration::from_millis(50);
                crate::disk::file_at_limit(&dirs, n, since)
            }
            _ => false,
        },
        memory_rlimit_reported: rlimit
            && spec.limits.memory.is_some()
            && stderr_tail(&rec).is_some_and(|t| reports_out_of_memory(&t).is_some()),
    });
    rec.outcome = Outcome {
        reason: verdict.reason,
        exit_code: verdict.exit_code,
        signal: verdict.signal,
        process_exit_code: verdict.process_exit_code,
        error: None,
    };
    rec.events = Events {
        oom_kill: c.oom_kill,
        pids_max: c.pids_max,
        cpu_throttled: c.cpu_throttled,
        cpu_throttled_us: c.cpu_throttled_us,
        memory_max: c.memory_max,
        leftover_killed: sup.leftover_killed,
        grace_expired: sup.grace_expired,
    };
    rec.usage = Usage {
        wall_s: (sup.ended - started).as_secs_f64(),
        cpu_user_s: c.cpu_user.as_secs_f64(),
        cpu_system_s: c.cpu_system.as_secs_f64(),
        memory_peak_bytes: c.memory_peak,
        pids_peak: c.pids_peak,
        io_read_bytes: c.io_read,
        io_write_bytes: c.io_write,
        io_devices: c
            .io_devices
            .iter()
            .filter_map(|d| {
                Some(corral_record::DeviceUsage {
                    device: d.dev?.to_string(),
                    read_bytes: d.rbytes,
                    write_bytes: d.wbytes,
                    read_ios: d.rios,
                    write_ios: d.wios,
                })
            })
            .collect(),
        io_pressure_some_us: c.io_pressure.0,
        io_pressure_full_us: c.io_pressure.1,
        disk_added_bytes: disk.map(|d| d.used),
        disk_peak_bytes: disk.map(|d| d.peak),
    };
    rec.started_at = corral_record::rfc3339(started_at);
    rec.finished_at = corral_record::rfc3339(finished_at);
    rec.notes = compose_notes(&rec);
    rec.timeline = recorder.map(crate::timeline::Recorder::finish);
    Ok(rec)
}

/// The last 4 KiB of the run's captured stderr (none when stderr was not captured).
fn stderr_tail(rec: &Record) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let path = &rec.output.as_ref()?.stderr.as_ref()?.path;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Removes the sandbox and tells the guard it no longer needs watching. A failed
/// removal stays registered, so the guard retries it when this process exits, and
/// `corral gc` after that.
fn teardown(
    sandbox: Box<dyn crate::backend::Sandbox>,
    guarded: &Option<(&crate::guard::Guard, crate::guard::GuardEntry)>,
) {
    match sandbox.teardown() {
        Ok(()) => {
            if let Some((g, e)) = guarded {
                g.unregister(e);
            }
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

fn effective_env(spec: &RunSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = if spec.clear_env {
        Vec::new()
    } else {
        std::env::vars().collect()
    };
    for (k, v) in &spec.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

fn base_record(backend: &dyn Backend, spec: &RunSpec, id: &str, plan: &Plan) -> Record {
    Record::new(RecordHead {
        id: id.to_string(),
        command: spec.command.clone(),
        cwd: spec
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .map(|c| c.display().to_string()),
        profile: spec.profile.clone(),
        backend: backend.kind().as_str().to_string(),
        backend_reason: backend.reason(),
        limits: LimitsRecord::new(&spec.limits, plan.enforced.clone(), plan.gaps.clone()),
    })
}

fn spawn_failed(mut rec: Record, code: i32, why: String) -> Record {
    rec.outcome = Outcome {
        reason: corral_record::Reason::SpawnFailed,
        exit_code: code,
        signal: None,
        process_exit_code: None,
        error: Some(why),
    };
    rec.notes = compose_notes(&rec);
    rec
}
