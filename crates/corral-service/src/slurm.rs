//! The Slurm executor's view of the cluster: what a run's batch job is (its spool
//! files, its `sbatch` options, its script), how Slurm's answers are read
//! (`scontrol show job -o`, `sacct -P` per step), what an ending Slurm caused means for
//! a record, and the one poller that watches every job.
//!
//! Only Slurm's client commands are used, from `PATH` with the usual `SLURM_CONF`:
//! `sbatch`, `scontrol`, `sacct` (only where it answers: without `slurmdbd` it does
//! not), `scancel`. Everything here but [`Poller`] and the command calls is a pure
//! function, tested on Slurm's own output.
//!
//! The spool is a directory every node sees: `output/ID.stdout|stderr` (the captured
//! output, what `corral logs` reads), `jobs/ID.json` (the run as the service resolved
//! it), `jobs/ID.sh` (the batch script), `jobs/ID.record.json` (the record `corral run`
//! writes on the node) and `jobs/ID.slurm.out` (corral's own stderr on the node).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_record::Reason;
use corral_run::{RunSpec, Stdio};
use corral_spec::Limits;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

/// The job name prefix: a run's job is `corral-ID`, so a restarted service finds a job
/// whose id it never stored.
pub const JOB_PREFIX: &str = "corral-";

/// Memory added to a run's limit for its job's `--mem`: corral itself on the node.
pub const MEM_OVERHEAD: u64 = 64 << 20;

/// Seconds added to a run's timeout and grace for its job's `--time`: Slurm ends a job
/// at its limit only after corral has had the time to end the run and write its record.
pub const TIME_MARGIN_S: u64 = 60;

/// How `corral serve --executor slurm` was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmConfig {
    /// `--slurm-partition`.
    pub partition: Option<String>,
    /// `--slurm-account`.
    pub account: Option<String>,
    /// `--spool`: a directory every node sees.
    pub spool: PathBuf,
    /// The corral binary the jobs run (the service's own path: the same on every node).
    pub corral: PathBuf,
}

impl SlurmConfig {
    /// Where the runs' captured output goes.
    pub fn output_dir(&self) -> PathBuf {
        self.spool.join("output")
    }

    /// Where the jobs' files go.
    pub fn jobs_dir(&self) -> PathBuf {
        self.spool.join("jobs")
    }

    /// One of a run's job files (`json`, `sh`, `record.json`, `slurm.out`).
    pub fn job_path(&self, id: &str, ext: &str) -> PathBuf {
        self.jobs_dir().join(format!("{id}.{ext}"))
    }
}

/// What the batch job's `corral run --job-file` reads: the run exactly as the service
/// resolved it (its profile, its effective limits, its environment), so the node does
/// not resolve it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    /// The run id.
    pub id: String,
    /// The working directory.
    pub cwd: Option<PathBuf>,
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
    /// Start from an empty environment.
    pub clear_env: bool,
    /// The profile the limits came from.
    pub profile: String,
    /// The effective limits.
    pub limits: Limits,
    /// The captured standard output.
    pub stdout: PathBuf,
    /// The captured standard error.
    pub stderr: PathBuf,
}

impl JobFile {
    /// The job file of a run spec (whose outputs are files).
    pub fn of(spec: &RunSpec) -> JobFile {
        let file = |s: &Stdio| match s {
            Stdio::File(p) => p.clone(),
            _ => PathBuf::from("/dev/null"),
        };
        JobFile {
            id: spec.id.clone().unwrap_or_default(),
            cwd: spec.cwd.clone(),
            env: spec.env.clone(),
            clear_env: spec.clear_env,
            profile: spec.profile.clone(),
            limits: spec.limits.clone(),
            stdout: file(&spec.stdout),
            stderr: file(&spec.stderr),
        }
    }

    /// The run spec of `command` under this job file.
    pub fn into_spec(self, command: Vec<String>) -> RunSpec {
        RunSpec {
            id: Some(self.id),
            command,
            cwd: self.cwd,
            env: self.env,
            clear_env: self.clear_env,
            stdin: Stdio::Null,
            stdout: Stdio::File(self.stdout),
            stderr: Stdio::File(self.stderr),
            profile: self.profile,
            limits: self.limits,
            // Every run of the service keeps its timeline, on a Slurm node too.
            timeline: Some(corral_run::timeline::DEFAULT_INTERVAL),
        }
    }
}

/// Quotes a word for `/bin/sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The batch script: `corral run` replaces the shell, so the job's batch step *is*
/// corral (a cancel signals it alone, and it ends the run its own clean way).
pub fn script(cfg: &SlurmConfig, id: &str, command: &[String]) -> String {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let cmd = command
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "#!/bin/sh\n# corral run {id}, handed to Slurm by the corral service\nexec {} run --quiet \
         --job-file {} --json {} -- {cmd}\n",
        q(&cfg.corral),
        q(&cfg.job_path(id, "json")),
        q(&cfg.job_path(id, "record.json")),
    )
}

/// `sbatch`'s arguments for a run: memory → `--mem` (plus [`MEM_OVERHEAD`]), CPUs →
/// `--cpus-per-task` (rounded up), timeout + grace → `--time` (plus
/// [`TIME_MARGIN_S`], whole minutes), never requeued (a run runs once), in `/tmp`
/// (where a run without a working directory of its own starts).
pub fn sbatch_args(cfg: &SlurmConfig, id: &str, limits: &Limits) -> Vec<String> {
    let mut a = vec![
        "--parsable".to_string(),
        format!("--job-name={JOB_PREFIX}{id}"),
        format!("--output={}", cfg.job_path(id, "slurm.out").display()),
        // The batch step's directory, and so a run's default working directory
        // (never the spool, which runs do not see).
        "--chdir=/tmp".to_string(),
        "--no-requeue".to_string(),
        "--nodes=1".to_string(),
        "--ntasks=1".to_string(),
    ];
    if let Some(m) = limits.memory {
        let mib = (m.saturating_add(MEM_OVERHEAD)).div_ceil(1 << 20);
        a.push(format!("--mem={mib}M"));
    }
    let cpus = limits.cpus.map_or(1, |c| (c.ceil() as u64).max(1));
    a.push(format!("--cpus-per-task={cpus}"));
    if let Some(t) = limits.timeout {
        let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0) + limits.grace.as_secs() + 1;
        a.push(format!("--time={}", (secs + TIME_MARGIN_S).div_ceil(60)));
    }
    if let Some(p) = &cfg.partition {
        a.push(format!("--partition={p}"));
    }
    if let Some(acc) = &cfg.account {
        a.push(format!("--account={acc}"));
    }
    a.push(cfg.job_path(id, "sh").display().to_string());
    a
}

/// Whether a failed Slurm command may succeed if tried again: the controller is
/// unreachable or busy (being restarted, failing over), not a refusal of the job.
pub fn transient(err: &str) -> bool {
    [
        "Unable to contact slurm controller",
        "connect failure",
        "Socket timed out",
        "temporarily unavailable",
        "Zero Bytes were transmitted",
        "standby mode",
        "cannot run sbatch",
    ]
    .iter()
    .any(|m| err.contains(m))
}

/// Whether a program is on `PATH`.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// Checks, before `corral serve --executor slurm` starts, that Slurm's commands are
/// there; the error is one sentence.
pub fn check_commands() -> Result<(), String> {
    match ["sbatch", "scontrol", "scancel"]
        .into_iter()
        .find(|p| !on_path(p))
    {
        Some(p) => Err(format!(
            "{p} is not on PATH (the Slurm executor uses Slurm's client commands)"
        )),
        None => Ok(()),
    }
}

/// The job id in `sbatch --parsable`'s answer (`ID` or `ID;CLUSTER`).
pub fn parse_sbatch(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_')).then(|| id.to_string())
}

/// One job as `scontrol show job -o` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobView {
    /// `JobId`.
    pub job_id: String,
    /// `JobName`.
    pub name: String,
    /// `JobState` (`PENDING`, `RUNNING`, `COMPLETED`, `OUT_OF_MEMORY`, ...).
    pub state: String,
    /// `NodeList` (`None` while pending).
    pub node: Option<String>,
    /// `ExitCode` as (code, signal).
    pub exit: Option<(i32, i32)>,
    /// `RunTime` in seconds.
    pub run_time_s: Option<u64>,
    /// `Reason`, when not `None`.
    pub reason: Option<String>,
}

/// Slurm's `code:signal`.
pub fn parse_exit(s: &str) -> Option<(i32, i32)> {
    let (c, sig) = s.split_once(':')?;
    Some((c.trim().parse().ok()?, sig.trim().parse().ok()?))
}

/// Slurm's `[D-]HH:MM:SS` (or `MM:SS`, with fractions in `sacct`'s CPU times).
pub fn parse_elapsed(s: &str) -> Option<f64> {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<f64>().ok()?, r),
        None => (0.0, s),
    };
    let mut total = 0.0;
    for part in rest.split(':') {
        total = total * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(days * 86400.0 + total)
}

/// The jobs in `scontrol show job -o`'s answer (one job a line; "No jobs in the
/// system" is none).
pub fn parse_scontrol(out: &str) -> Vec<JobView> {
    out.lines()
        .filter_map(|line| {
            let mut v = JobView::default();
            for tok in line.split_whitespace() {
                let Some((k, val)) = tok.split_once('=') else {
                    continue;
                };
                match k {
                    "JobId" => v.job_id = val.to_string(),
                    "JobName" => v.name = val.to_string(),
                    "JobState" => v.state = val.to_string(),
                    "NodeList" if val != "(null)" && !val.is_empty() => {
                        v.node = Some(val.to_string())
                    }
                    "ExitCode" => v.exit = parse_exit(val),
                    "RunTime" => v.run_time_s = parse_elapsed(val).map(|s| s as u64),
                    "Reason" if val != "None" => v.reason = Some(val.to_string()),
                    _ => {}
                }
            }
            (!v.job_id.is_empty()).then_some(v)
        })
        .collect()
}

/// One line of `sacct -P -n -o JobID,State,ExitCode,NodeList,Elapsed,MaxRSS,TotalCPU`:
/// the job or one of its steps (`ID.batch`, `ID.extern`, `ID.0`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// `JobID`.
    pub id: String,
    /// `State`, without sacct's ` by UID`.
    pub state: String,
    /// Who cancelled it (`CANCELLED by UID`).
    pub cancelled_by: Option<u32>,
    /// `ExitCode`.
    pub exit: Option<(i32, i32)>,
    /// `NodeList`.
    pub node: Option<String>,
    /// `Elapsed` in seconds.
    pub elapsed_s: Option<f64>,
    /// `MaxRSS` in bytes.
    pub max_rss: Option<u64>,
    /// `TotalCPU` in seconds.
    pub total_cpu_s: Option<f64>,
}

/// The fields asked of `sacct`, in [`parse_sacct`]'s order.
pub const SACCT_FIELDS: &str = "JobID,State,ExitCode,NodeList,Elapsed,MaxRSS,TotalCPU";

fn parse_size_k(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (num, mult) = match s.as_bytes()[s.len() - 1] {
        b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        b'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    Some((num.parse::<f64>().ok()? * mult as f64) as u64)
}

/// The job and every step in `sacct -P -n -o` [`SACCT_FIELDS`]' answer.
pub fn parse_sacct(out: &str) -> Vec<Step> {
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            if f.len() < 3 || f[0].trim().is_empty() {
                return None;
            }
            let (state, by) = match f[1].split_once(" by ") {
                Some((s, uid)) => (s.trim(), uid.trim().parse().ok()),
                None => (f[1].trim(), None),
            };
            let get = |i: usize| f.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
            Some(Step {
                id: f[0].trim().to_string(),
                state: state.to_string(),
                cancelled_by: by,
                exit: parse_exit(f[2]),
                node: get(3).filter(|n| *n != "None assigned").map(str::to_string),
                elapsed_s: get(4).and_then(parse_elapsed),
                max_rss: get(5).and_then(parse_size_k),
                total_cpu_s: get(6).and_then(parse_elapsed),
            })
        })
        .collect()
}

/// Whether Slurm is done with a job in this state (its processes are gone).
pub fn is_final(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "OUT_OF_MEMORY"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
    )
}

/// How telling a state is about why a job ended: a step's `OUT_OF_MEMORY` says more
/// than the job line's `FAILED`.
fn weight(state: &str) -> u8 {
    match state {
        "OUT_OF_MEMORY" => 9,
        "TIMEOUT" | "DEADLINE" => 8,
        "NODE_FAIL" | "BOOT_FAIL" => 7,
        "PREEMPTED" => 6,
        "CANCELLED" => 5,
        "FAILED" => 4,
        "COMPLETED" => 1,
        _ => 0,
    }
}

/// The state that explains the ending best, over the job line and every step.
pub fn telling_state<'a>(job: Option<&'a str>, steps: &'a [Step]) -> Option<&'a str> {
    job.into_iter()
        .chain(steps.iter().map(|s| s.state.as_str()))
        .max_by_key(|s| weight(s))
}

/// What an ending Slurm caused means: its reason, corral's exit status for it, and
/// the sentence that says so. `by_client`: the corral service cancelled the job for a
/// client.
pub fn slurm_ending(state: &str, job_id: &str, by_client: bool) -> (Reason, i32, String) {
    match state {
        "OUT_OF_MEMORY" => (
            Reason::Oom,
            137,
            format!(
                "Out of memory: Slurm ended job {job_id} for using more memory than it \
                 was given (OUT_OF_MEMORY)."
            ),
        ),
        "TIMEOUT" | "DEADLINE" => (
            Reason::Timeout,
            124,
            format!("Timed out: Slurm ended job {job_id} at its time limit ({state})."),
        ),
        "NODE_FAIL" | "BOOT_FAIL" => (
            Reason::Lost,
            crate::service::LOST_EXIT_CODE,
            format!("Lost: the node of Slurm job {job_id} failed ({state}) with the run on it."),
        ),
        "PREEMPTED" => (
            Reason::Cancelled,
            128 + libc::SIGTERM,
            format!("Cancelled: Slurm preempted job {job_id} for other work (PREEMPTED)."),
        ),
        "CANCELLED" if by_client => (
            Reason::Cancelled,
            128 + libc::SIGTERM,
            format!("Cancelled: a client cancelled it and Slurm cancelled job {job_id}."),
        ),
        "CANCELLED" => (
            Reason::Cancelled,
            128 + libc::SIGTERM,
            format!(
                "Cancelled: Slurm cancelled job {job_id} (scancel outside the corral \
                 service, e.g. by an administrator)."
            ),
        ),
        other => (
            Reason::Lost,
            crate::service::LOST_EXIT_CODE,
            format!(
                "Lost: Slurm says job {job_id} ended {other} but corral on the node wrote \
                 no record of the run."
            ),
        ),
    }
}

/// Runs a Slurm client command; its stdout, or one line saying why not.
pub fn command(prog: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{prog} {}: {} ({})",
            args.first().map(String::as_str).unwrap_or(""),
            err.trim(),
            out.status
        ))
    }
}

/// `scontrol show job -o`: every job Slurm still knows.
pub fn show_jobs() -> Result<Vec<JobView>, String> {
    command("scontrol", &["show".into(), "job".into(), "-o".into()]).map(|o| parse_scontrol(&o))
}

/// Set once `sacct` said the cluster keeps no accounting: it is not asked again.
static NO_ACCOUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `sacct` for one job and its steps; `None` when sacct does not answer (no
/// accounting storage: then it is not asked again) or knows nothing of it.
pub fn sacct(job_id: &str) -> Option<Vec<Step>> {
    use std::sync::atomic::Ordering::Relaxed;
    if NO_ACCOUNTING.load(Relaxed) {
        return None;
    }
    let args = ["-j", job_id, "-P", "-n", "-o", SACCT_FIELDS].map(String::from);
    let out = match command("sacct", &args) {
        Ok(out) => out,
        Err(e) => {
            if e.contains("accounting storage is disabled") || e.contains("cannot run sacct") {
                tracing::info!("{e}: Slurm's view of a job comes from scontrol alone");
                NO_ACCOUNTING.store(true, Relaxed);
            }
            return None;
        }
    };
    let steps = parse_sacct(&out);
    (!steps.is_empty()).then_some(steps)
}

/// Cancels a job for a client: a pending job is removed; a running one's batch step
/// (corral itself) gets SIGTERM, so corral ends the run and writes its record.
pub fn cancel(job_id: &str) {
    let pending = ["--state=PENDING", job_id].map(String::from);
    if let Err(e) = command("scancel", &pending) {
        tracing::warn!("{e}");
    }
    let running = ["--batch", "--signal=TERM", job_id].map(String::from);
    if let Err(e) = command("scancel", &running) {
        tracing::debug!("{e}");
    }
}

/// What the poller last saw of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Slurm shows it so.
    Job(JobView),
    /// Slurm answered and no longer knows it.
    Gone,
}

/// The one task that watches every job: `scontrol show job -o` once per tick for all of
/// them, the tick backing off from 250 ms to 5 s while nothing changes (a new job
/// brings it back), and a failing Slurm retried at the same pace: never a loop per job.
#[derive(Default)]
pub struct Poller {
    jobs: Mutex<HashMap<String, watch::Sender<Option<Seen>>>>,
    wake: Notify,
    started: std::sync::OnceLock<()>,
}

impl Poller {
    /// Watches a job until the receiver is dropped. Call inside the runtime.
    pub fn watch(self: &Arc<Self>, job_id: &str) -> watch::Receiver<Option<Seen>> {
        let me = self.clone();
        self.started.get_or_init(|| {
            tokio::spawn(me.run());
        });
        let rx = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.entry(job_id.to_string())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe()
        };
        self.wake.notify_one();
        rx
    }

    async fn run(self: Arc<Self>) {
        const FAST: Duration = Duration::from_millis(250);
        const SLOW: Duration = Duration::from_secs(5);
        let mut delay = FAST;
        loop {
            let empty = {
                let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
                jobs.retain(|_, tx| tx.receiver_count() > 0);
                jobs.is_empty()
            };
            if empty {
                self.wake.notified().await;
                delay = FAST;
            }
            // Only the jobs watched before Slurm is asked are judged by its answer: a job
            // `sbatch` created while `scontrol` ran may be missing from it, and is not gone.
            let asked: std::collections::HashSet<String> = {
                let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
                jobs.keys().cloned().collect()
            };
            match tokio::task::spawn_blocking(show_jobs).await {
                Ok(Ok(views)) => {
                    let by_id: HashMap<&str, &JobView> =
                        views.iter().map(|v| (v.job_id.as_str(), v)).collect();
                    let mut changed = false;
                    let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
                    for (id, tx) in jobs.iter().filter(|(id, _)| asked.contains(*id)) {
                        let seen = match by_id.get(id.as_str()) {
                            Some(v) => Seen::Job((*v).clone()),
                            None => Seen::Gone,
                        };
                        changed |= tx.send_if_modified(|old| {
                            let new = Some(seen);
                            (*old != new).then(|| *old = new).is_some()
                        });
                    }
                    delay = if changed { FAST } else { (delay * 2).min(SLOW) };
                }
                Ok(Err(e)) => {
                    tracing::warn!("polling Slurm: {e}");
                    delay = (delay * 2).min(SLOW);
                }
                Err(e) => tracing::error!("polling Slurm: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {
                    delay = FAST;
                    tokio::time::sleep(FAST).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SlurmConfig {
        SlurmConfig {
            partition: Some("main".into()),
            account: None,
            spool: "/spool".into(),
            corral: "/usr/bin/corral".into(),
        }
    }

    #[test]
    fn sbatch_options_follow_the_limits() {
        let mut l = Limits {
            memory: Some(100 << 20),
            cpus: Some(1.5),
            timeout: Some(Duration::from_secs(30)),
            ..Limits::default()
        };
        l.grace = Duration::from_secs(5);
        let a = sbatch_args(&cfg(), "r1", &l);
        assert!(a.contains(&"--mem=164M".to_string()), "{a:?}");
        assert!(a.contains(&"--cpus-per-task=2".to_string()), "{a:?}");
        // 30 s + 5 s grace + 1 + 60 s margin: 2 minutes.
        assert!(a.contains(&"--time=2".to_string()), "{a:?}");
        assert!(a.contains(&"--partition=main".to_string()), "{a:?}");
        assert!(a.contains(&"--job-name=corral-r1".to_string()), "{a:?}");
        assert!(a.contains(&"--no-requeue".to_string()), "{a:?}");
        assert_eq!(a.last().unwrap(), "/spool/jobs/r1.sh");
        assert!(!a.iter().any(|x| x.starts_with("--account")));
        assert_eq!(parse_sbatch("42\n"), Some("42".into()));
        assert_eq!(parse_sbatch("42;cluster\n"), Some("42".into()));
        assert_eq!(parse_sbatch("sbatch: error"), None);
        assert!(transient(
            "sbatch --parsable: sbatch: error: Batch job submission failed: Unable to \
             contact slurm controller (connect failure) (exit status: 1)"
        ));
        assert!(!transient(
            "sbatch --parsable: sbatch: error: Batch job submission failed: Invalid \
             partition name specified (exit status: 1)"
        ));
    }

    #[test]
    fn the_script_execs_corral_with_quoted_words() {
        let s = script(
            &cfg(),
            "r1",
            &["sh".into(), "-c".into(), "echo 'hi'".into()],
        );
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains(
            "exec '/usr/bin/corral' run --quiet --job-file '/spool/jobs/r1.json' --json \
             '/spool/jobs/r1.record.json' -- 'sh' '-c' 'echo '\\''hi'\\'''\n"
        ));
    }

    #[test]
    fn scontrol_lines_are_read() {
        let out = "JobId=1 JobName=corral-a UserId=root(0) JobState=CANCELLED Reason=None \
                   ExitCode=0:15 RunTime=00:00:03 TimeLimit=UNLIMITED NodeList=vm BatchHost=vm\n\
                   JobId=3 JobName=x JobState=PENDING Reason=Resources ExitCode=0:0 \
                   RunTime=1-00:00:01 NodeList=(null)\n";
        let v = parse_scontrol(out);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            JobView {
                job_id: "1".into(),
                name: "corral-a".into(),
                state: "CANCELLED".into(),
                node: Some("vm".into()),
                exit: Some((0, 15)),
                run_time_s: Some(3),
                reason: None,
            }
        );
        assert_eq!(v[1].node, None);
        assert_eq!(v[1].run_time_s, Some(86401));
        assert_eq!(v[1].reason.as_deref(), Some("Resources"));
        assert!(parse_scontrol("No jobs in the system\n").is_empty());
    }

    /// An OOM in a step shows as FAILED on the job line: every step is read.
    #[test]
    fn every_step_counts() {
        let out = "12|FAILED|1:0|n1|00:00:07||00:01.500\n\
                   12.batch|OUT_OF_MEMORY|0:125|n1|00:00:07|204800K|00:01.400\n\
                   12.extern|COMPLETED|0:0|n1|00:00:07|0|00:00:00\n";
        let steps = parse_sacct(out);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1].max_rss, Some(200 << 20));
        assert_eq!(steps[0].total_cpu_s, Some(1.5));
        assert_eq!(steps[0].elapsed_s, Some(7.0));
        assert_eq!(telling_state(Some("FAILED"), &steps), Some("OUT_OF_MEMORY"));
        let c = parse_sacct("13|CANCELLED by 0|0:0|None assigned|00:00:00||00:00:00\n");
        assert_eq!(
            (c[0].state.as_str(), c[0].cancelled_by),
            ("CANCELLED", Some(0))
        );
        assert_eq!(c[0].node, None);
    }

    #[test]
    fn endings_map_to_reasons() {
        let r = |s, by| slurm_ending(s, "7", by);
        assert_eq!(
            (r("OUT_OF_MEMORY", false).0, r("OUT_OF_MEMORY", false).1),
            (Reason::Oom, 137)
        );
        assert_eq!(r("TIMEOUT", false).0, Reason::Timeout);
        assert_eq!(r("DEADLINE", false).0, Reason::Timeout);
        assert_eq!(r("NODE_FAIL", false).0, Reason::Lost);
        assert_eq!(r("PREEMPTED", false).0, Reason::Cancelled);
        assert!(r("CANCELLED", false).2.contains("administrator"));
        assert!(r("CANCELLED", true).2.contains("a client cancelled it"));
        let (reason, code, why) = r("FAILED", false);
        assert_eq!((reason, code), (Reason::Lost, 125));
        assert!(why.contains("wrote no record"), "{why}");
        assert!(is_final("OUT_OF_MEMORY") && !is_final("COMPLETING") && !is_final("PENDING"));
        assert_eq!(parse_elapsed("01:02:03"), Some(3723.0));
        assert_eq!(parse_elapsed("02:03.250"), Some(123.25));
    }

    #[test]
    fn a_job_file_round_trips_to_the_spec() {
        let spec = RunSpec {
            id: Some("r1".into()),
            command: vec!["true".into()],
            cwd: Some("/w".into()),
            env: vec![("A".into(), "b".into())],
            clear_env: true,
            stdin: Stdio::Null,
            stdout: Stdio::File("/o".into()),
            stderr: Stdio::File("/e".into()),
            profile: "default".into(),
            limits: Limits {
                memory: Some(1 << 20),
                ..Limits::default()
            },
            timeline: None,
        };
        let jf = JobFile::of(&spec);
        let back: JobFile = serde_json::from_str(&serde_json::to_string(&jf).unwrap()).unwrap();
        assert_eq!(back, jf);
        let s = back.into_spec(vec!["true".into()]);
        assert_eq!(
            (s.id, s.cwd, s.clear_env),
            (Some("r1".into()), Some("/w".into()), true)
        );
        assert!(matches!(s.stdout, Stdio::File(p) if p == Path::new("/o")));
        assert_eq!(s.limits.memory, Some(1 << 20));
        assert_eq!(s.timeline, Some(corral_run::timeline::DEFAULT_INTERVAL));
    }
}
