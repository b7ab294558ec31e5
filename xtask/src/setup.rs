//! `cargo xtask vm-setup`: host packages, guest kernel and initramfs.
//!
//! Nothing but the Debian packages listed in [`PACKAGES`] is installed on the
//! host. The guest kernel package is downloaded with `apt-get download` and
//! unpacked with `dpkg-deb -x` into the cache directory; its compressed bzImage
//! payload is extracted once into an ELF `vmlinux` (booted through the PVH entry
//! point, which saves the in-guest decompression, ~3 s under TCG). The
//! initramfs is a busybox + a handful of modules, written in-process and
//! rebuilt whenever the embedded guest scripts or the module set change.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::cpio::CpioWriter;
use crate::Paths;

/// Debian packages the VM runner needs on the host.
///
/// `dbus`, `dbus-user-session` and `systemd-container` are only used by
/// `vm --systemd` (system bus, user bus and `machinectl`/`systemd-run -M` in
/// the guest, which runs the host's own binaries). `e2fsprogs`, `mount` and
/// `util-linux` (`mkfs.ext4`, `lsattr`, `mount -o loop`, `findmnt`) make and mount
/// the disk tests' ext4 images (`tests/io.rs`, on the host and in the guest).
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    "cpio",
    "dbus",
    "dbus-user-session",
    "systemd-container",
    "e2fsprogs",
    "mount",
    "util-linux",
];

/// Kernel meta package resolved to its ABI package (override:
/// `CORRAL_VM_KERNEL_PACKAGE`, e.g. a backports meta package).
const KERNEL_META: &str = "linux-image-amd64";

/// Modules loaded by the stage-1 init (their dependencies are added from
/// `modules.dep`; built-in ones are skipped).
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "overlay",
];

/// Stage-1 init script (PID 1 inside the initramfs).
pub const INIT_SH: &str = include_str!("guest/init.sh");
/// Stage-2 wrapper that runs the command after `switch_root`.
pub const WRAPPER_SH: &str = include_str!("guest/wrapper.sh");

const BUSYBOX: &str = "/bin/busybox";
/// The qemu binary used for the VM.
pub const QEMU: &str = "qemu-system-x86_64";

/// How much checking [`setup`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check packages with dpkg and re-resolve the kernel package (vm-setup).
    Full,
    /// Trust a complete cache; only rebuild the initramfs if stale (vm).
    Quick,
}

/// Everything needed to boot the guest.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// Kernel image passed to `qemu -kernel` (ELF vmlinux, or the bzImage).
    pub vmlinux: PathBuf,
    /// Uncompressed newc initramfs.
    pub initramfs: PathBuf,
    /// The kernel's module tree (`.../lib/modules/<kver>`), bind-mounted at
    /// `/lib/modules/<kver>` in the guest so that `modprobe` works there.
    pub modules: PathBuf,
}

/// Makes sure packages, kernel and initramfs are present and current,
/// installing/downloading/building what is missing. Idempotent; serialised with
/// an exclusive lock on `<cache>/setup.lock`.
pub fn setup(paths: &Paths, mode: Mode) -> Result<Assets> {
    let _lock = lock(&paths.cache.join("setup.lock"))?;
    let stamp = paths.cache.join("packages.ok");
    let pkg_line = PACKAGES.join(" ");
    let current = paths.cache.join("current-kernel");

    if mode == Mode::Quick {
        let pkgs_ok = fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == pkg_line)
            && find_in_path(QEMU).is_some()
            && Path::new(BUSYBOX).is_file();
        if pkgs_ok {
            if let Ok(cur) = fs::read_to_string(&current) {
                let mut it = cur.split_whitespace();
                if let (Some(pkg), Some(kver), Some(image)) = (it.next(), it.next(), it.next()) {
                    let kdir = paths.cache.join("kernel").join(pkg);
                    let image = PathBuf::from(image);
                    if kdir.join(".complete").is_file() && image.is_file() {
                        let initramfs = ensure_initramfs(paths, &kdir, kver)?;
                        return Ok(Assets {
                            kernel_version: kver.to_string(),
                            vmlinux: image,
                            initramfs,
                            modules: modules_base(&kdir).join(kver),
                        });
                    }
                }
            }
        }
        eprintln!("vm-setup: cache incomplete, running the full setup");
    }

    ensure_packages(&stamp, &pkg_line)?;
    let pkg = resolve_kernel_package()?;
    let kdir = fetch_kernel(paths, &pkg)?;
    let kver = kernel_release(&kdir)?;
    ensure_depmod(&kdir, &kver)?;
    let image = ensure_vmlinux(paths, &kdir, &kver)?;
    let initramfs = ensure_initramfs(paths, &kdir, &kver)?;
    fs::write(&current, format!("{pkg} {kver} {}\n", image.display()))?;
    remove_stale_kernels(paths, &pkg, &kver);
    Ok(Assets {
        modules: modules_base(&kdir).join(&kver),
        kernel_version: kver,
        vmlinux: image,
        initramfs,
    })
}

/// Deletes kernels and images of other kernel releases from the cache (after
/// the meta package moved on to a new ABI).
fn remove_stale_kernels(paths: &Paths, pkg: &str, kver: &str) {
    if let Ok(rd) = fs::read_dir(paths.cache.join("kernel")) {
        for e in rd.flatten() {
            if e.file_name() != pkg {
                eprintln!("vm-setup: removing old kernel {}", e.path().display());
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(&paths.cache) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let versioned = ["vmlinux-", "initramfs-"]
                .iter()
                .find_map(|p| name.strip_prefix(p));
            if let Some(rest) = versioned {
                let v = rest.trim_end_matches(".cpio").trim_end_matches(".hash");
                if v != kver {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Holds an exclusive `flock` until dropped.
struct Lock(#[allow(dead_code)] fs::File);

/// Takes an exclusive `flock` on `path` (creating it), waiting if needed.
fn lock(path: &Path) -> Result<Lock> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    use rustix::fs::{flock, FlockOperation};
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        eprintln!(
            "vm-setup: waiting for another setup to finish ({})",
            path.display()
        );
        flock(&f, FlockOperation::LockExclusive).context("flock")?;
    }
    Ok(Lock(f))
}

/// Returns the full path of `prog` if it is an executable file in `$PATH`.
pub fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A `Command` whose stdout goes to our stderr (stdout belongs to the guest).
fn cmd(prog: &str) -> Command {
    let mut c = Command::new(prog);
    if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
        c.stdout(Stdio::from(fd));
    }
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Runs `c` and fails unless it exits 0.
fn run(c: &mut Command) -> Result<()> {
    let status = c
        .status()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

/// Runs `c` and returns its stdout; fails unless it exits 0.
fn output(c: &mut Command) -> Result<String> {
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether apt has package lists at all (a fresh container may have none).
fn apt_lists_present() -> bool {
    fs::read_dir("/var/lib/apt/lists").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
    })
}

/// `apt-get update`.
fn apt_update() -> Result<()> {
    eprintln!("vm-setup: apt-get update");
    run(cmd("apt-get").args(["update", "-q"]))
}

/// Installs the missing [`PACKAGES`] (nothing if all are installed), then
/// writes the stamp that lets later runs skip the dpkg query.
fn ensure_packages(stamp: &Path, pkg_line: &str) -> Result<()> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\\n"])
        .args(PACKAGES)
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query (is this a Debian host?)")?;
    let installed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(" installed").map(str::to_string))
        .collect();
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(*p))
        .collect();
    if !missing.is_empty() {
        if !rustix::process::geteuid().is_root() {
            bail!(
                "missing packages {missing:?}; run as root or: sudo apt-get install -y --no-install-recommends {}",
                missing.join(" ")
            );
        }
        if !apt_lists_present() {
            apt_update()?;
        }
        eprintln!("vm-setup: installing {}", missing.join(" "));
        let install = || -> Result<()> {
            // apt would remove conflicting packages without asking (with
            // this image: the backported qemu-utils conflicts with bookworm's
            // qemu-system-x86); only allow that when asked to.
            let allow_remove =
                std::env::var_os("CORRAL_VM_APT_ALLOW_REMOVE").is_some_and(|v| v == "1");
            let sim = output(
                Command::new("apt-get")
                    .args(["install", "-s", "-q", "--no-install-recommends"])
                    .args(&missing),
            )?;
            let removals: Vec<&str> = sim
                .lines()
                .filter_map(|l| l.strip_prefix("Remv "))
                .collect();
            // A package apt would remove only because a newer, conflicting version is
            // installed (this image's backported qemu-utils) is replaced by the
            // release's own version instead, so it stays available.
            if !removals.is_empty() {
                let names: Vec<String> = removals
                    .iter()
                    .filter_map(|r| r.split_whitespace().next())
                    .map(|n| format!("{n}/{}", codename()))
                    .collect();
                let mut with: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
                with.extend(names.iter().cloned());
                let sim2 = output(
                    Command::new("apt-get")
                        .args([
                            "install",
                            "-s",
                            "-q",
                            "--no-install-recommends",
                            "--allow-downgrades",
                        ])
                        .args(&with),
                )?;
                if !sim2.lines().any(|l| l.starts_with("Remv ")) {
                    eprintln!(
                        "vm-setup: replacing {} with the {} versions (they conflict with {})",
                        removals.join("; "),
                        codename(),
                        missing.join(" ")
                    );
                    let mut c = cmd("apt-get");
                    c.args([
                        "install",
                        "-y",
                        "-q",
                        "--no-install-recommends",
                        "--allow-downgrades",
                        "--no-remove",
                    ]);
                    return run(c.args(&with));
                }
            }
            if !removals.is_empty() && !allow_remove {
                bail!(
                    "installing {} would REMOVE these packages: {}; re-run with \
                     CORRAL_VM_APT_ALLOW_REMOVE=1 to accept, or install by hand",
                    missing.join(" "),
                    removals.join("; ")
                );
            }
            let mut c = cmd("apt-get");
            c.args(["install", "-y", "-q", "--no-install-recommends"]);
            if !allow_remove {
                c.arg("--no-remove");
            }
            run(c.args(&missing))
        };
        if let Err(e) = install() {
            if e.to_string().contains("REMOVE") {
                return Err(e);
            }
            apt_update()?;
            install()?;
        }
    }
    fs::write(stamp, format!("{pkg_line}\n"))?;
    Ok(())
}

/// The Debian release's code name (`bookworm`), from `/etc/os-release`.
fn codename() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "stable".into())
}

/// Resolves the kernel meta package to its ABI package with `apt-cache depends`.
fn resolve_kernel_package() -> Result<String> {
    let meta = std::env::var("CORRAL_VM_KERNEL_PACKAGE").unwrap_or_else(|_| KERNEL_META.into());
    let query = || -> Result<String> {
        let out = output(Command::new("apt-cache").args(["depends", &meta]))?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|d| d.starts_with("linux-image-"))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("apt-cache depends {meta}: no linux-image dependency"))
    };
    match query() {
        Ok(p) => Ok(p),
        Err(_) => {
            apt_update()?;
            query()
        }
    }
}

/// Downloads and unpacks the kernel package into `<cache>/kernel/<pkg>` unless
/// it is already there.
fn fetch_kernel(paths: &Paths, pkg: &str) -> Result<PathBuf> {
    let kdir = paths.cache.join("kernel").join(pkg);
    if kdir.join(".complete").is_file() {
        return Ok(kdir);
    }
    let dl = paths.cache.join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl)?;
    eprintln!("vm-setup: downloading {pkg}");
    let download = || {
        run(cmd("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", pkg])
            .current_dir(&dl))
    };
    if download().is_err() {
        apt_update()?;
        download()?;
    }
    let deb = fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {pkg} produced no .deb"))?;
    let tmp = kdir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    eprintln!("vm-setup: unpacking {}", deb.display());
    run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    let _ = fs::remove_dir_all(&kdir);
    fs::rename(&tmp, &kdir)?;
    fs::write(kdir.join(".complete"), "")?;
    let _ = fs::remove_dir_all(&dl);
    Ok(kdir)
}

/// `usr/lib/modules` or `lib/modules` of the unpacked kernel package.
fn modules_base(kdir: &Path) -> PathBuf {
    let usr = kdir.join("usr/lib/modules");
    if usr.is_dir() {
        usr
    } else {
        kdir.join("lib/modules")
    }
}

/// The kernel release: the directory under `lib/modules` (the package ships
/// no `modules.dep`; [`ensure_depmod`] generates it).
fn kernel_release(kdir: &Path) -> Result<String> {
    let base = modules_base(kdir);
    let mut rels: Vec<String> = fs::read_dir(&base)
        .with_context(|| format!("reading {}", base.display()))?
        .flatten()
        .filter(|e| e.path().join("modules.order").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    rels.sort();
    rels.pop()
        .ok_or_else(|| anyhow!("no kernel release under {}", base.display()))
}

/// Runs `depmod -b` on the unpacked kernel unless `modules.dep` exists.
fn ensure_depmod(kdir: &Path, kver: &str) -> Result<()> {
    let base = modules_base(kdir);
    if base.join(kver).join("modules.dep").is_file() {
        return Ok(());
    }
    // depmod -b ROOT looks in ROOT/lib/modules/KVER.
    let root = base
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("bad modules dir {}", base.display()))?;
    let depmod = ["/sbin/depmod", "/usr/sbin/depmod"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| anyhow!("depmod not found (package kmod)"))?;
    run(cmd(depmod).arg("-b").arg(root).arg(kver))
}

/// Extracts the ELF kernel from the bzImage into `<cache>/vmlinux-<kver>`
/// (falls back to the bzImage if it has no PVH entry point).
fn ensure_vmlinux(paths: &Paths, kdir: &Path, kver: &str) -> Result<PathBuf> {
    let out = paths.cache.join(format!("vmlinux-{kver}"));
    if out.is_file() {
        return Ok(out);
    }
    let bz = kdir.join("boot").join(format!("vmlinuz-{kver}"));
    let data = fs::read(&bz).with_context(|| format!("reading {}", bz.display()))?;
    match extract_vmlinux(&data) {
        Ok(elf) if has_pvh_note(&elf) => {
            let tmp = out.with_extension("tmp");
            fs::write(&tmp, &elf)?;
            fs::rename(&tmp, &out)?;
            eprintln!(
                "vm-setup: extracted {} ({} MiB)",
                out.display(),
                elf.len() >> 20
            );
            Ok(out)
        }
        Ok(_) => {
            eprintln!("vm-setup: vmlinux has no PVH entry point; booting the bzImage");
            Ok(bz)
        }
        Err(e) => {
            eprintln!("vm-setup: cannot extract vmlinux ({e:#}); booting the bzImage");
            Ok(bz)
        }
    }
}

/// Little-endian u32 at `off`.
fn le32(d: &[u8], off: usize) -> Result<u32> {
    let b = d
        .get(off..off + 4)
        .ok_or_else(|| anyhow!("truncated image"))?;
    Ok(u32::from_le_bytes(b.try_into().unwrap()))
}

/// Decompresses the payload of an x86 bzImage (boot protocol >= 2.08) with
/// the matching command-line tool.
fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage");
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let pm = (setup_sects + 1) * 512;
    let off = pm + le32(bz, 0x248)? as usize;
    let len = le32(bz, 0x24c)? as usize;
    let payload = bz
        .get(off..off + len)
        .ok_or_else(|| anyhow!("payload outside the image"))?;
    // The build appends the uncompressed size (le32) after the stream.
    let (stream, size) = payload.split_at(len - 4);
    let size = u32::from_le_bytes(size.try_into().unwrap()) as usize;
    let tool: &[&str] = if stream.starts_with(&[0x1f, 0x8b]) {
        &["gzip", "-dc"]
    } else if stream.starts_with(b"\xfd7zXZ\0") {
        &["xz", "-dc", "--single-stream"]
    } else if stream.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        &["zstd", "-dcq"]
    } else if stream.starts_with(&[0x5d, 0, 0]) {
        &["xz", "--format=lzma", "-dc"]
    } else if stream.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        &["lz4", "-dc"]
    } else if stream.starts_with(b"BZh") {
        &["bzip2", "-dc"]
    } else {
        bail!("unknown payload compression");
    };
    let elf = pipe_through(tool, stream)?;
    if !elf.starts_with(b"\x7fELF") {
        bail!("decompressed payload is not ELF");
    }
    if elf.len() != size {
        bail!("decompressed {} bytes, expected {size}", elf.len());
    }
    Ok(elf)
}

/// Runs `tool` with `input` on stdin and returns its stdout.
fn pipe_through(tool: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", tool[0]))?;
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!("{} failed: {}", tool.join(" "), out.status);
    }
    Ok(out.stdout)
}

/// Whether a 64-bit ELF image has the Xen PVH entry note
/// (`XEN_ELFNOTE_PHYS32_ENTRY`) that lets qemu boot it directly.
fn has_pvh_note(elf: &[u8]) -> bool {
    let rd16 = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let rd32 = |o: usize| le32(elf, o).ok().map(|v| v as usize);
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let scan = || -> Option<bool> {
        if elf.get(4) != Some(&2) {
            return Some(false); // not ELFCLASS64
        }
        let phoff = rd64(0x20)?;
        let phentsize = rd16(0x36)?;
        let phnum = rd16(0x38)?;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            if rd32(ph)? != 4 {
                continue; // not PT_NOTE
            }
            let (mut o, end) = (rd64(ph + 8)?, rd64(ph + 8)? + rd64(ph + 32)?);
            while o + 12 <= end {
                let (namesz, descsz, ty) = (rd32(o)?, rd32(o + 4)?, rd32(o + 8)?);
                let name = elf.get(o + 12..o + 12 + namesz)?;
                if ty == 18 && name.starts_with(b"Xen") {
                    return Some(true);
                }
                o += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
            }
        }
        Some(false)
    };
    scan().unwrap_or(false)
}

/// 64-bit FNV-1a, used to detect a stale initramfs.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// Module name as the kernel sees it (`9pnet_virtio.ko.xz` -> `9pnet_virtio`).
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Returns the module files (relative to the modules dir) to load, in load
/// order (dependencies first).
fn module_load_order(moddir: &Path) -> Result<Vec<String>> {
    let dep = fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((m, rest)) = line.split_once(':') else {
            continue;
        };
        let ds = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(m), (m.to_string(), ds));
    }
    fn visit(
        path: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, ds)) = deps.get(&module_name(path)) {
            for d in ds {
                visit(d, deps, seen, order);
            }
        }
        order.push(path.to_string());
    }
    let (mut seen, mut order) = (HashSet::new(), Vec::new());
    for m in MODULES {
        match deps.get(*m) {
            Some((path, _)) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(*m) => {}
            None => bail!("kernel module {m} is neither in modules.dep nor built in"),
        }
    }
    Ok(order)
}

/// Reads a module, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` (busybox
/// `insmod` only loads plain `.ko` files).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        pipe_through(&["xz", "-dc"], &data)
    } else if name.ends_with(".zst") {
        pipe_through(&["zstd", "-dcq"], &data)
    } else if name.ends_with(".gz") {
        pipe_through(&["gzip", "-dc"], &data)
    } else {
        Ok(data)
    }
}

/// Builds `<cache>/initramfs-<kver>.cpio` unless its recorded hash (over the
/// guest scripts, busybox and the module list) is current.
fn ensure_initramfs(paths: &Paths, kdir: &Path, kver: &str) -> Result<PathBuf> {
    let moddir = modules_base(kdir).join(kver);
    let order = module_load_order(&moddir)?;
    let bb_meta = fs::metadata(BUSYBOX).with_context(|| format!("{BUSYBOX} is missing"))?;
    let bb_id = format!(
        "{} {:?}",
        bb_meta.len(),
        bb_meta
            .modified()
            .ok()
            .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
    );
    let order_s = order.join("\n");
    let hash = format!(
        "{:016x}",
        fnv1a(&[
            INIT_SH.as_bytes(),
            WRAPPER_SH.as_bytes(),
            kver.as_bytes(),
            order_s.as_bytes(),
            bb_id.as_bytes(),
        ])
    );
    let out = paths.cache.join(format!("initramfs-{kver}.cpio"));
    let hash_file = paths.cache.join(format!("initramfs-{kver}.hash"));
    if out.is_file() && fs::read_to_string(&hash_file).is_ok_and(|h| h.trim() == hash) {
        return Ok(out);
    }
    eprintln!("vm-setup: building {}", out.display());
    let mut w = CpioWriter::new();
    for d in [
        "/bin",
        "/dev",
        "/proc",
        "/sys",
        "/lower",
        "/rw",
        "/newroot",
        "/modules",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/etc",
        "/tmp",
    ] {
        w.dir(d);
    }
    w.char_dev("/dev/console", 0o600, 5, 1);
    w.char_dev("/dev/null", 0o666, 1, 3);
    w.file("/bin/busybox", 0o755, &fs::read(BUSYBOX)?);
    // The applet links (`busybox --install` at boot would cost ~0.1 s).
    let applets = output(Command::new(BUSYBOX).arg("--list"))?;
    for a in applets.lines().map(str::trim) {
        if !a.is_empty() && a != "busybox" && !a.contains('/') {
            w.symlink(&format!("/bin/{a}"), "busybox");
        }
    }
    w.file("/init", 0o755, INIT_SH.as_bytes());
    w.file("/wrapper.sh", 0o755, WRAPPER_SH.as_bytes());
    let mut load = String::new();
    for m in &order {
        let name = format!("{}.ko", module_name(m));
        w.file(
            &format!("/modules/{name}"),
            0o644,
            &read_module(&moddir.join(m))?,
        );
        load.push_str(&name);
        load.push('\n');
    }
    w.file("/modules/load", 0o644, load.as_bytes());
    let tmp = out.with_extension("tmp");
    fs::write(&tmp, w.finish())?;
    fs::rename(&tmp, &out)?;
    fs::write(&hash_file, format!("{hash}\n"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko.xz"),
            "9pnet_virtio"
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko"), "9p");
        assert_eq!(module_name("kernel/x/virtio-pci.ko.zst"), "virtio_pci");
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
        assert_ne!(fnv1a(&[b"ab"]), fnv1a(&[b"a", b"b"]));
    }
}
