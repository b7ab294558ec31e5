//! `cargo xtask vm`: boot a throw-away cgroup v2 VM and run one command in it.
//!
//! Host side of the protocol (the guest side is `guest/init.sh` and
//! `guest/wrapper.sh`):
//!
//! * a per-run control directory `<cache>/runs/<pid>` is shared with the guest
//!   (9p tag `ctl`); the host writes `config.sh` (mode, repository path, test
//!   user) and `cmd.sh` (cwd, environment, argv, shell-quoted); the guest
//!   creates `started` right before it runs the command and `status` (the exit
//!   status) right after it;
//! * the command's stdout/stderr travel over two virtio-serial ports whose qemu
//!   chardevs are pipes created here and handed to qemu as open fds
//!   (`-add-fd`); threads copy them to our stdout/stderr as data arrives;
//! * the kernel console goes to `<cache>/last-console.log` (and to stderr with
//!   `--console`);
//! * the guest reboots when done and qemu runs with `-no-reboot`, so qemu's exit
//!   marks the end of the run.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use crate::setup::{self, Assets};
use crate::Paths;

/// Exit status when the guest died after the command started but before it
/// reported an exit status (kernel panic, guest crash).
pub const EXIT_GUEST_DIED: u8 = 123;
/// Exit status when `--timeout` expired.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the VM could not be set up or did not boot.
pub const EXIT_VM_FAILURE: u8 = 125;

/// Unprivileged user created in the guest (both modes).
pub const TEST_USER: &str = "corraltest";
/// Its uid and gid.
pub const TEST_UID: u32 = 4242;

/// Host variables passed to the command unchanged (besides every `CORRAL_*`).
const PASSTHROUGH_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TERM",
    "RUST_BACKTRACE",
    "RUST_LOG",
    "RUST_TEST_THREADS",
];

/// Kernel command line. Not `acpi=off` (which saves ~0.7 s but leaves the
/// guest with one CPU: the MADT is needed to find the others); `pci=noacpi`
/// skips the slow AML evaluation of the PCI interrupt links instead.
const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init cgroup_no_v1=all \
    systemd.unified_cgroup_hierarchy=1 pci=noacpi cryptomgr.notests audit=0 tsc=reliable \
    no_timer_check quiet";

/// `lpj=` for the guest, from the host's TSC rate (TCG's guest TSC runs at the
/// host rate): skips the delay-loop calibration of each CPU, which under TCG
/// can take up to ~0.8 s and often fails anyway. Assumes `CONFIG_HZ=250`
/// (Debian's default).
fn lpj_arg() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some(format!("lpj={}", (mhz * 1e6 / 250.0) as u64))
}

/// Options of `cargo xtask vm`.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Boot systemd as PID 1 and run the command as a service.
    pub systemd: bool,
    /// Guest RAM, in qemu `-m` syntax.
    pub mem: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Wall-clock limit for the whole VM run.
    pub timeout: Duration,
    /// Extra environment for the command (`--env`), applied last.
    pub env: Vec<(OsString, OsString)>,
    /// Copy the kernel console to stderr as it arrives.
    pub console: bool,
    /// The command and its arguments.
    pub command: Vec<OsString>,
}

impl VmOptions {
    /// Parses the arguments after `vm`. Returns `Ok(None)` for `--help`.
    pub fn parse(args: &[OsString]) -> Result<Option<VmOptions>> {
        let mut o = VmOptions {
            systemd: false,
            mem: "2G".into(),
            cpus: 2,
            timeout: Duration::from_secs(1200),
            env: Vec::new(),
            console: false,
            command: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let s = arg.to_string_lossy();
            let (name, inline) = match s.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(OsString::from(v))),
                _ => (s.to_string(), None),
            };
            let mut value = |what: &str| -> Result<OsString> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| anyhow!("{name} needs {what}")),
                }
            };
            match name.as_str() {
                "--" => {
                    o.command = it.cloned().collect();
                    break;
                }
                "-h" | "--help" => return Ok(None),
                "--systemd" => o.systemd = true,
                "--console" => o.console = true,
                "--mem" => {
                    let v = value("a size")?.to_string_lossy().into_owned();
                    let digits = v.trim_end_matches(['k', 'K', 'M', 'G', 'T', 'm', 'g', 't']);
                    if digits.is_empty() || digits.parse::<u64>().is_err() {
                        bail!("--mem: bad size {v:?} (examples: 2G, 1536M)");
                    }
                    o.mem = v;
                }
                "--cpus" => {
                    let v = value("a number")?;
                    o.cpus = v
                        .to_string_lossy()
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| anyhow!("--cpus: bad number {v:?}"))?;
                }
                "--timeout" => {
                    let v = value("seconds")?;
                    let secs: f64 = v
                        .to_string_lossy()
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s > 0.0 && s.is_finite())
                        .ok_or_else(|| anyhow!("--timeout: bad number of seconds {v:?}"))?;
                    o.timeout = Duration::from_secs_f64(secs);
                }
                "--env" => {
                    let v = value("K=V")?;
                    let b = v.as_bytes();
                    let (k, val) = match b.iter().position(|&c| c == b'=') {
                        Some(i) => (
                            OsStr::from_bytes(&b[..i]).to_owned(),
                            OsStr::from_bytes(&b[i + 1..]).to_owned(),
                        ),
                        None => {
                            let host = std::env::var_os(&v)
                                .ok_or_else(|| anyhow!("--env {v:?}: not set on the host"))?;
                            (v.clone(), host)
                        }
                    };
                    if k.is_empty() {
                        bail!("--env: empty variable name");
                    }
                    o.env.push((k, val));
                }
                _ if s.starts_with('-') => bail!("unknown option {s:?}"),
                _ => {
                    o.command = std::iter::once(arg).chain(it).cloned().collect();
                    break;
                }
            }
        }
        if o.command.is_empty() {
            bail!("no command given (usage: cargo xtask vm [OPTIONS] -- CMD [ARGS...])");
        }
        Ok(Some(o))
    }
}

/// Quotes `s` for a POSIX shell (single quotes; works for any bytes but NUL).
fn shell_quote(s: &OsStr) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in s.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// The command's environment: pass-through variables, every `CORRAL_*`, the
/// VM markers, then `--env` (later entries win).
fn guest_env(opts: &VmOptions) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut set = |k: &OsStr, v: &OsStr| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_owned(), v.to_owned()));
    };
    for k in PASSTHROUGH_ENV {
        if let Some(v) = std::env::var_os(k) {
            set(k.as_ref(), &v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        set(
            "PATH".as_ref(),
            "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".as_ref(),
        );
    }
    // As a cargo runner (`cargo test` with
    // CARGO_TARGET_<triple>_RUNNER=".../xtask vm --"), also pass what cargo
    // sets for the test (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...), but not the
    // values `cargo run -p xtask` sets for xtask itself.
    let cargo_runner = std::env::var_os("CARGO_PKG_NAME").is_some_and(|n| n != "xtask");
    for (k, v) in std::env::vars_os() {
        let kb = k.as_bytes();
        if kb.starts_with(b"CORRAL_") || (cargo_runner && kb.starts_with(b"CARGO_")) {
            set(&k, &v);
        }
    }
    set("CORRAL_IN_VM".as_ref(), "1".as_ref());
    let mode = if opts.systemd { "systemd" } else { "plain" };
    set("CORRAL_VM_MODE".as_ref(), mode.as_ref());
    set("CORRAL_VM_TEST_USER".as_ref(), TEST_USER.as_ref());
    set("CORRAL_VM_TEST_UID".as_ref(), TEST_UID.to_string().as_ref());
    for (k, v) in &opts.env {
        set(k, v);
    }
    env
}

/// Writes `config.sh` (read by the stage-1 init) and `cmd.sh` (run by the
/// wrapper) into the control directory.
fn write_control_files(
    ctl: &Path,
    paths: &Paths,
    assets: &Assets,
    opts: &VmOptions,
    cwd: &Path,
) -> Result<()> {
    let mut config = Vec::new();
    let mode = if opts.systemd { "systemd" } else { "plain" };
    writeln!(config, "CORRAL_MODE={mode}")?;
    config.extend_from_slice(b"CORRAL_REPO=");
    config.extend(shell_quote(paths.repo.as_os_str()));
    config.push(b'\n');
    writeln!(config, "CORRAL_HOSTNAME=corral-vm")?;
    writeln!(config, "CORRAL_KVER={}", assets.kernel_version)?;
    config.extend_from_slice(b"CORRAL_MODULES=");
    config.extend(shell_quote(assets.modules.as_os_str()));
    config.push(b'\n');
    writeln!(config, "CORRAL_TEST_USER={TEST_USER}")?;
    writeln!(config, "CORRAL_TEST_UID={TEST_UID}")?;
    fs::write(ctl.join("config.sh"), config)?;

    let mut cmd = b"cd ".to_vec();
    cmd.extend(shell_quote(cwd.as_os_str()));
    cmd.extend_from_slice(b" || exit 125\nexec /usr/bin/env -i");
    for (k, v) in guest_env(opts) {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(&v);
        cmd.push(b' ');
        cmd.extend(shell_quote(&kv));
    }
    for a in &opts.command {
        cmd.push(b' ');
        cmd.extend(shell_quote(a));
    }
    cmd.push(b'\n');
    fs::write(ctl.join("cmd.sh"), cmd)?;
    Ok(())
}

/// Escapes a path for a qemu option value (`,` must be doubled).
fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Whether hardware virtualisation is usable: `kvm_intel`/`kvm_amd` loaded and
/// `/dev/kvm` accessible (the nested `kvm_pvm` of the CI machines is not
/// usable with stock kernels). `CORRAL_VM_ACCEL=tcg|kvm` overrides.
fn use_kvm() -> bool {
    match std::env::var("CORRAL_VM_ACCEL").as_deref() {
        Ok("kvm") => return true,
        Ok("tcg") => return false,
        _ => {}
    }
    (Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists())
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// A pipe whose write end qemu inherits (CLOEXEC cleared) and whose read end
/// is copied by a thread.
fn inheritable_pipe() -> Result<(io::PipeReader, io::PipeWriter)> {
    let (r, w) = io::pipe().context("creating a pipe")?;
    // SAFETY: fcntl on a valid fd owned by `w`; clears FD_CLOEXEC only.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(io::Error::last_os_error()).context("fcntl(F_SETFD)");
    }
    Ok((r, w))
}

/// Copies `src` to each of `dsts` chunk by chunk, flushing every chunk so the
/// output is live.
fn relay(mut src: io::PipeReader, mut dsts: Vec<Box<dyn Write + Send>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for d in dsts.iter_mut() {
                        let _ = d.write_all(&buf[..n]).and_then(|_| d.flush());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    })
}

/// Removes control directories of runs whose xtask process is gone.
fn clean_stale_runs(runs: &Path) {
    let Ok(rd) = fs::read_dir(runs) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let pid = name.to_string_lossy();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(&*pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).unwrap_or_default().as_secs_f64()
}

/// Prints the last `n` lines of a log file to stderr, indented.
fn print_tail(what: &str, p: &Path, n: usize) {
    let Ok(s) = fs::read(p) else { return };
    let s = String::from_utf8_lossy(&s);
    let lines: Vec<&str> = s.lines().collect();
    if lines.is_empty() {
        return;
    }
    eprintln!(
        "vm: --- last {} lines of {what} ({}) ---",
        n.min(lines.len()),
        p.display()
    );
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("vm: | {l}");
    }
}

/// Firmware: qboot when qemu ships it (reaches the kernel ~0.4-1 s sooner
/// than SeaBIOS under TCG and costs ~1 s less CPU per boot), else qemu's
/// default SeaBIOS. `CORRAL_VM_BIOS=seabios` or `=PATH` overrides.
fn firmware() -> Option<String> {
    match std::env::var("CORRAL_VM_BIOS") {
        Ok(b) if b == "seabios" || b.is_empty() => None,
        Ok(b) => Some(b),
        Err(_) => {
            let qboot = Path::new("/usr/share/qemu/qboot.rom");
            qboot.is_file().then(|| qemu_path(qboot))
        }
    }
}

/// Builds the qemu command line (without the fd plumbing).
fn qemu_args(opts: &VmOptions, paths: &Paths, assets: &Assets, ctl: &Path) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-machine", "pc"]);
    if let Some(bios) = firmware() {
        push(&["-bios", &bios]);
    }
    if use_kvm() {
        push(&["-accel", "kvm", "-cpu", "host"]);
    } else {
        // Without ERMS/FSRM the guest kernel zeroes and copies pages with
        // `rep stosq`/`movsq` instead of byte-wise `rep stosb`, which TCG
        // runs ~4x slower (page faults, read(2), memcpy in glibc).
        let cpu = std::env::var("CORRAL_VM_CPU").unwrap_or_else(|_| "max,-erms,-fsrm".into());
        push(&["-accel", "tcg,thread=multi", "-cpu", &cpu]);
    }
    let cpus = opts.cpus.to_string();
    push(&["-smp", &cpus, "-m", &opts.mem]);
    let mut cmdline = KERNEL_CMDLINE.to_string();
    if let Some(lpj) = lpj_arg() {
        cmdline.push(' ');
        cmdline.push_str(&lpj);
    }
    if let Ok(extra) = std::env::var("CORRAL_VM_KERNEL_ARGS") {
        cmdline.push(' ');
        cmdline.push_str(&extra);
    }
    let kernel = qemu_path(&assets.vmlinux);
    let initrd = qemu_path(&assets.initramfs);
    push(&["-kernel", &kernel, "-initrd", &initrd, "-append", &cmdline]);
    let shares = [
        ("hostroot", Path::new("/"), true),
        ("repo", paths.repo.as_path(), false),
        ("ctl", ctl, false),
    ];
    for (tag, path, ro) in shares {
        let ro = if ro { ",readonly=on" } else { "" };
        let fsdev = format!(
            "local,id={tag},path={},security_model=passthrough,multidevs=remap{ro}",
            qemu_path(path)
        );
        let dev = format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}");
        push(&["-fsdev", &fsdev, "-device", &dev]);
    }
    push(&["-device", "virtio-serial-pci,id=vser"]);
    a
}

/// Runs the command in a fresh VM and returns the exit status to report
/// (the command's own status, or [`EXIT_GUEST_DIED`], [`EXIT_TIMEOUT`],
/// [`EXIT_VM_FAILURE`]). Runs the quick setup first (full setup if the cache
/// is incomplete).
pub fn run_vm(opts: &VmOptions) -> Result<u8> {
    let t0 = Instant::now();
    let paths = Paths::discover()?;
    let assets = setup::setup(&paths, setup::Mode::Quick).context("VM setup failed")?;
    let cwd = std::env::current_dir().context("current directory")?;

    let runs = paths.cache.join("runs");
    fs::create_dir_all(&runs)?;
    clean_stale_runs(&runs);
    let ctl = runs.join(std::process::id().to_string());
    let _ = fs::remove_dir_all(&ctl);
    fs::create_dir_all(&ctl)?;
    write_control_files(&ctl, &paths, &assets, opts, &cwd)?;
    let console_log = ctl.join("console.log");
    let qemu_log = ctl.join("qemu.log");

    let (out_r, out_w) = inheritable_pipe()?;
    let (err_r, err_w) = inheritable_pipe()?;
    let (con_r, con_w) = inheritable_pipe()?;
    let mut args = qemu_args(opts, &paths, &assets, &ctl);
    let fd = |w: &io::PipeWriter| w.as_raw_fd().to_string();
    args.extend([
        "-add-fd".into(),
        format!("fd={},set=1", fd(&out_w)),
        "-add-fd".into(),
        format!("fd={},set=2", fd(&err_w)),
        "-add-fd".into(),
        format!("fd={},set=3", fd(&con_w)),
        "-chardev".into(),
        "file,id=out,path=/dev/fdset/1,append=on".into(),
        "-device".into(),
        "virtserialport,bus=vser.0,chardev=out,name=corral.stdout".into(),
        "-chardev".into(),
        "file,id=err,path=/dev/fdset/2,append=on".into(),
        "-device".into(),
        "virtserialport,bus=vser.0,chardev=err,name=corral.stderr".into(),
        "-chardev".into(),
        "file,id=con,path=/dev/fdset/3,append=on".into(),
        "-serial".into(),
        "chardev:con".into(),
    ]);
    fs::write(ctl.join("qemu.args"), args.join("\n") + "\n")?;

    let qemu =
        setup::find_in_path(setup::QEMU).ok_or_else(|| anyhow!("{} not found", setup::QEMU))?;
    let spawn_time = SystemTime::now();
    let t_spawn = Instant::now();
    let mut child = Command::new(&qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(&qemu_log)?))
        .stderr(Stdio::from(
            fs::File::options().append(true).open(&qemu_log)?,
        ))
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    // Only qemu may hold the write ends, so that EOF ends the relays.
    drop((out_w, err_w, con_w));

    let mut con_dsts: Vec<Box<dyn Write + Send>> = vec![Box::new(fs::File::create(&console_log)?)];
    if opts.console {
        con_dsts.push(Box::new(io::stderr()));
    }
    let relays = [
        relay(out_r, vec![Box::new(io::stdout())]),
        relay(err_r, vec![Box::new(io::stderr())]),
        relay(con_r, con_dsts),
    ];

    let deadline = t_spawn + opts.timeout;
    let mut timed_out = false;
    let qemu_status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for r in relays {
        let _ = r.join();
    }
    let _ = io::stdout().flush();

    let started = mtime(&ctl.join("started"));
    let status_time = mtime(&ctl.join("status"));
    let status = fs::read_to_string(ctl.join("status"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let total = t0.elapsed().as_secs_f64();
    let boot = started.map(|s| secs_between(spawn_time, s));
    let _ = fs::rename(&console_log, paths.cache.join("last-console.log"));
    let _ = fs::rename(&qemu_log, paths.cache.join("last-qemu.log"));
    let console_log = paths.cache.join("last-console.log");
    let qemu_log = paths.cache.join("last-qemu.log");
    let _ = fs::remove_dir_all(&ctl);

    let boot_s = boot.map_or_else(
        || "did not boot".to_string(),
        |b| format!("booted in {b:.1} s"),
    );
    if timed_out {
        eprintln!(
            "vm: TIMEOUT: killed the VM after {:.0} s (--timeout); {}; {}",
            opts.timeout.as_secs_f64(),
            boot_s,
            if started.is_some() {
                "the command was still running"
            } else {
                "the command never started"
            }
        );
        print_tail("the guest console", &console_log, 30);
        return Ok(EXIT_TIMEOUT);
    }
    match (started, status) {
        (Some(s), Some(code)) => {
            let cmd_s = status_time.map_or(0.0, |t| secs_between(s, t));
            eprintln!(
                "vm: {boot_s}, command exited {code} after {cmd_s:.1} s (total {total:.1} s)"
            );
            Ok(u8::try_from(code).unwrap_or(EXIT_VM_FAILURE))
        }
        (Some(_), None) => {
            eprintln!(
                "vm: GUEST DIED: {boot_s}, but the guest stopped without reporting the command's \
                 exit status (qemu: {qemu_status}; kernel panic or crash?)"
            );
            print_tail("the guest console", &console_log, 40);
            Ok(EXIT_GUEST_DIED)
        }
        (None, _) => {
            eprintln!(
                "vm: VM FAILED TO BOOT: the command never started (qemu: {qemu_status}, after {total:.1} s)"
            );
            print_tail("the guest console", &console_log, 40);
            print_tail("qemu's output", &qemu_log, 20);
            Ok(EXIT_VM_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parse_options_and_command() {
        let o = VmOptions::parse(&os(&[
            "--systemd",
            "--mem",
            "1G",
            "--cpus=3",
            "--timeout",
            "5",
            "--env",
            "A=b=c",
            "--",
            "ls",
            "-l",
        ]))
        .unwrap()
        .unwrap();
        assert!(o.systemd);
        assert_eq!(o.mem, "1G");
        assert_eq!(o.cpus, 3);
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.env, vec![("A".into(), "b=c".into())]);
        assert_eq!(o.command, os(&["ls", "-l"]));
        let o = VmOptions::parse(&os(&["true", "--systemd"]))
            .unwrap()
            .unwrap();
        assert!(!o.systemd);
        assert_eq!(o.command, os(&["true", "--systemd"]));
        assert!(VmOptions::parse(&os(&["--mem", "lots", "--", "x"])).is_err());
        assert!(VmOptions::parse(&os(&["--"])).is_err());
        assert!(VmOptions::parse(&os(&["--help"])).unwrap().is_none());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(OsStr::new("a b")), b"'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), b"'it'\\''s'");
    }
}
