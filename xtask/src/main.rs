//! Developer tasks for the corral workspace, run as `cargo xtask <task>`.
//!
//! The main tasks boot a throw-away QEMU virtual machine with a pure cgroup v2
//! hierarchy so that corral's cgroup code can be tested on hosts whose own
//! cgroup layout is unsuitable (hybrid v1/v2, no delegation, containers):
//!
//! * `cargo xtask vm-setup` prepares the cache (packages, kernel, initramfs);
//! * `cargo xtask vm [OPTIONS] -- CMD [ARGS...]` runs one command in a fresh VM.
//!
//! See `docs/vm.md` for the design and the measured costs.

mod cpio;
mod run;
mod setup;
mod test;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  test [--only STEP] [--skip STEP]
                           the whole test suite: lint, host, python, vm (cgroup v2),
                           systemd (see docs/testing.md)
  vm-setup                 install the VM packages, fetch the kernel, build the initramfs
  vm [OPTIONS] -- CMD...   run CMD as root in a fresh cgroup v2 VM and exit with its status

vm options:
  --systemd                boot systemd as PID 1 and run CMD as a Type=oneshot service
                           (Delegate=yes), with D-Bus and the user manager of uid 4242
  --mem SIZE               guest RAM, as understood by qemu -m (default 2G)
  --cpus N                 number of vCPUs (default 2)
  --timeout SECS           kill the VM after SECS seconds (default 1200)
  --env K=V                set K=V for CMD (repeatable); --env K passes the host's K
  --console                also copy the guest console to stderr, live
  --status-file PATH       write a one-line JSON summary: outcome (exited, timeout,
                           guest_died, boot_failed, setup_failed), exit_code,
                           command_status, boot_secs, command_secs, total_secs
  -h, --help               show this help

exit status of `vm`: the exit status of CMD (0-255), or
  123  the guest died while CMD was running (kernel panic, guest crash)
  124  --timeout expired
  125  the VM could not be set up or did not boot

CMD runs as root in the directory `vm` was started from, with PATH, HOME, TERM,
RUST_BACKTRACE, RUST_LOG, RUST_TEST_THREADS, every CORRAL_* variable, the --env
values and CORRAL_IN_VM=1, CORRAL_VM_MODE, CORRAL_VM_TEST_USER=corraltest,
CORRAL_VM_TEST_UID=4242. The repository is shared read-write at its host path;
the rest of the host's root is visible read-only (writes go to a tmpfs overlay).

environment:
  CORRAL_VM_CACHE           cache directory (default <repo>/.vm-cache)
  CORRAL_VM_ACCEL=tcg|kvm   force the accelerator (default: kvm only with kvm_intel/kvm_amd)
  CORRAL_VM_CPU             qemu -cpu model under TCG (default max,-erms,-fsrm)
  CORRAL_VM_BIOS            seabios, or a firmware path (default qboot when installed)
  CORRAL_VM_KERNEL_ARGS     extra kernel command line (e.g. loglevel=7; cgroup_disable=memory
                            takes the memory controller away, to see the vm step fail)
  CORRAL_VM_KERNEL_PACKAGE  kernel meta package for vm-setup (default linux-image-amd64)
  CORRAL_VM_APT_ALLOW_REMOVE=1  let vm-setup's apt-get remove conflicting packages
";

/// Entry point: dispatches to the task named by the first argument.
fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    }
    let task = args.remove(0);
    let result = match task.to_str() {
        Some("vm-setup") => run_setup(&args),
        Some("test") => test::run_tests(&args).map(ExitCode::from),
        Some("vm") => match run::VmOptions::parse(&args) {
            Ok(Some(opts)) => run::run_vm(&opts).map(ExitCode::from),
            Ok(None) => {
                print!("{USAGE}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("xtask vm: {e:#}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("xtask: unknown task {task:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(run::EXIT_VM_FAILURE)
        }
    }
}

/// `cargo xtask vm-setup`: verifies/installs everything (always checks packages).
fn run_setup(args: &[OsString]) -> Result<ExitCode> {
    if let Some(a) = args.first() {
        if a == "-h" || a == "--help" {
            print!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        bail!("vm-setup takes no arguments (got {a:?})");
    }
    let paths = Paths::discover()?;
    let assets = setup::setup(&paths, setup::Mode::Full)?;
    eprintln!(
        "vm-setup: ready: kernel {} ({}), initramfs {}",
        assets.kernel_version,
        assets.vmlinux.display(),
        assets.initramfs.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Locations used by the VM tasks.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Root of the repository (shared read-write with the guest at the same path).
    pub repo: PathBuf,
    /// Cache directory: `$CORRAL_VM_CACHE` or `<repo>/.vm-cache`.
    pub cache: PathBuf,
}

impl Paths {
    /// Finds the repository root (from this crate's manifest directory, falling
    /// back to `git rev-parse --show-toplevel`) and the cache directory.
    pub fn discover() -> Result<Paths> {
        let repo = repo_root()?;
        let cache = match std::env::var_os("CORRAL_VM_CACHE") {
            Some(c) if !c.is_empty() => PathBuf::from(c),
            _ => repo.join(".vm-cache"),
        };
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating cache dir {}", cache.display()))?;
        let cache = cache
            .canonicalize()
            .with_context(|| format!("resolving {}", cache.display()))?;
        Ok(Paths { repo, cache })
    }
}

/// The repository root: the parent of this crate's manifest directory
/// (compile time), else `git rev-parse --show-toplevel`.
fn repo_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(parent) = manifest.parent() {
        if parent.join("Cargo.toml").is_file() {
            if let Ok(p) = parent.canonicalize() {
                return Ok(p);
            }
        }
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .context("running git rev-parse --show-toplevel")?;
    if !out.status.success() {
        bail!("cannot find the repository root");
    }
    let s = String::from_utf8(out.stdout).context("non-UTF-8 repository path")?;
    Ok(PathBuf::from(s.trim_end()).canonicalize()?)
}
