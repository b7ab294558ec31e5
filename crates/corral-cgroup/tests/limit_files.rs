//! The limit writers against a temporary directory laid out like a cgroup (plain files
//! named `memory.max`, `memory.limit_in_bytes`, ...), as youki's libcgroups tests do:
//! no root and no cgroup mount needed. What they check is what lands in each file and
//! what is read back; the kernel's own refusals are covered by `v1_native`.

use std::path::{Path, PathBuf};

use corral_cgroup::layout::Layout;
use corral_cgroup::limits::{Held, LimitSet};
use corral_cgroup::v1::Group1;
use corral_cgroup::v2::Cgroup2;
use corral_spec::LimitKind;

const MIB: u64 = 1 << 20;
/// What v1 shows for "unlimited" with 4 KiB pages.
const V1_UNLIMITED: &str = "9223372036854771712\n";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("corral-limit-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    /// Creates `dir` (under the scratch root) holding `files` with their contents.
    fn group(&self, dir: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = self.0.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        d
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(d: &Path, f: &str) -> String {
    std::fs::read_to_string(d.join(f)).unwrap()
}

fn set(memory: Option<u64>, swap: Option<u64>, quota: Option<u64>, pids: Option<u64>) -> LimitSet {
    LimitSet {
        memory,
        swap,
        cpu_quota_us: quota,
        cpu_period_us: 100_000,
        pids,
    }
}

const V2_FILES: &[(&str, &str)] = &[
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("cpu.max", "max 100000\n"),
    ("pids.max", "max\n"),
];

#[test]
fn v2_writes_and_reads_back() {
    let s = Scratch::new("v2");
    let d = s.group("run", V2_FILES);
    let cg = Cgroup2::at(&d);
    let e = cg
        .write_limits(&set(Some(64 * MIB), Some(0), Some(50_000), Some(32)))
        .unwrap();
    assert_eq!(read(&d, "memory.max"), (64 * MIB).to_string());
    assert_eq!(read(&d, "memory.swap.max"), "0");
    assert_eq!(read(&d, "cpu.max"), "50000 100000");
    assert_eq!(read(&d, "pids.max"), "32");
    assert_eq!(e.memory, Held::Read(Some(64 * MIB)));
    assert_eq!(e.swap, Held::Read(Some(0)));
    assert_eq!(e.cpus, Held::Read(Some(0.5)));
    assert_eq!(e.pids, Held::Read(Some(32)));

    // Unlimited is written as `max` and read back as no limit.
    let e = cg.write_limits(&set(None, None, None, None)).unwrap();
    assert_eq!(read(&d, "memory.max"), "max");
    assert_eq!(read(&d, "memory.swap.max"), "max");
    assert_eq!(read(&d, "cpu.max"), "max 100000");
    assert_eq!(read(&d, "pids.max"), "max");
    assert_eq!(e.memory, Held::Read(None));
    assert_eq!(e.swap, Held::Read(None));
    assert_eq!(e.cpus, Held::Read(None));
    assert_eq!(e.pids, Held::Read(None));
}

#[test]
fn v2_missing_files_are_absent_and_untouched() {
    let s = Scratch::new("v2-missing");
    // No swap accounting, no cpu controller.
    let d = s.group("run", &[("memory.max", "max\n"), ("pids.max", "max\n")]);
    let e = Cgroup2::at(&d)
        .write_limits(&set(Some(MIB), Some(0), Some(50_000), Some(8)))
        .unwrap();
    assert_eq!(e.memory, Held::Read(Some(MIB)));
    assert!(e.swap.is_absent() && e.cpus.is_absent());
    assert_eq!(e.pids.limit(), Some(8));
    assert!(!d.join("memory.swap.max").exists() && !d.join("cpu.max").exists());

    // Swap is written only beside memory.max (the memory controller).
    let d = s.group("noswap", &[("memory.swap.max", "max\n")]);
    let e = Cgroup2::at(&d)
        .write_limits(&set(Some(MIB), Some(0), None, None))
        .unwrap();
    assert!(e.memory.is_absent() && e.swap.is_absent());
    assert_eq!(read(&d, "memory.swap.max"), "max\n");
}

#[test]
fn v2_refused_write_names_the_limit() {
    let s = Scratch::new("v2-refused");
    let d = s.group("run", &[("memory.max", "max\n")]);
    // A directory where pids.max should be: the write fails (EISDIR).
    std::fs::create_dir(d.join("pids.max")).unwrap();
    let e = Cgroup2::at(&d)
        .write_limits(&set(Some(MIB), None, None, Some(4)))
        .unwrap_err();
    assert_eq!(e.limit, LimitKind::Pids);
    assert_eq!(e.source.raw_os_error(), Some(libc::EISDIR));
    assert!(
        e.to_string()
            .starts_with("cannot set the process limit: write "),
        "{e}"
    );
    assert!(e.to_string().contains("pids.max"), "{e}");
}

/// A fake v1 layout: one directory per hierarchy under the scratch root, the run's
/// group `run` in each, holding the given files.
fn v1_group(s: &Scratch, hiers: &[(&str, &[(&str, &str)])]) -> Group1 {
    let mut mountinfo = String::new();
    let mut ctrls = Vec::new();
    for (i, (ctrl, files)) in hiers.iter().enumerate() {
        let mount = s.0.join(ctrl);
        s.group(&format!("{ctrl}/run"), files);
        mountinfo.push_str(&format!(
            "{} 25 0:{i} / {} rw - cgroup cgroup rw,{ctrl}\n",
            30 + i,
            mount.display()
        ));
        ctrls.push(*ctrl);
    }
    Group1::open(
        &Layout::from_mountinfo(&mountinfo),
        Path::new("/run"),
        &ctrls,
    )
}

const V1_MEMORY: &[(&str, &str)] = &[
    ("memory.limit_in_bytes", V1_UNLIMITED),
    ("memory.memsw.limit_in_bytes", V1_UNLIMITED),
];
const V1_CPU: &[(&str, &str)] = &[
    ("cpu.cfs_quota_us", "-1\n"),
    ("cpu.cfs_period_us", "100000\n"),
];
const V1_PIDS: &[(&str, &str)] = &[("pids.max", "max\n")];

#[test]
fn v1_writes_memsw_as_memory_plus_swap() {
    let s = Scratch::new("v1");
    let g = v1_group(
        &s,
        &[("memory", V1_MEMORY), ("cpu", V1_CPU), ("pids", V1_PIDS)],
    );
    let mem = g.dir("memory").unwrap().to_path_buf();
    let e = g
        .write_limits(&set(
            Some(100 * MIB),
            Some(50 * MIB),
            Some(50_000),
            Some(10),
        ))
        .unwrap();
    assert_eq!(read(&mem, "memory.limit_in_bytes"), (100 * MIB).to_string());
    assert_eq!(
        read(&mem, "memory.memsw.limit_in_bytes"),
        (150 * MIB).to_string()
    );
    let cpu = g.dir("cpu").unwrap();
    assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(g.dir("pids").unwrap(), "pids.max"), "10");
    assert_eq!(e.memory, Held::Read(Some(100 * MIB)));
    assert_eq!(e.swap, Held::Read(Some(50 * MIB)), "memsw - memory");
    assert_eq!(e.cpus, Held::Read(Some(0.5)));
    assert_eq!(e.pids, Held::Read(Some(10)));

    // Swap 0: memsw equals memory.
    let e = g
        .write_limits(&set(Some(100 * MIB), Some(0), None, None))
        .unwrap();
    assert_eq!(
        read(&mem, "memory.memsw.limit_in_bytes"),
        (100 * MIB).to_string()
    );
    assert_eq!(e.swap, Held::Read(Some(0)));
    assert_eq!(read(g.dir("cpu").unwrap(), "cpu.cfs_quota_us"), "-1");
    assert_eq!(e.cpus, Held::Read(None));
    assert_eq!(read(g.dir("pids").unwrap(), "pids.max"), "max");
}

#[test]
fn v1_max_and_saturation() {
    let s = Scratch::new("v1-max");
    let g = v1_group(&s, &[("memory", V1_MEMORY)]);
    let mem = g.dir("memory").unwrap().to_path_buf();
    // Unlimited swap: memsw unlimited, memory limited.
    let e = g.write_limits(&set(Some(MIB), None, None, None)).unwrap();
    assert_eq!(read(&mem, "memory.limit_in_bytes"), MIB.to_string());
    assert_eq!(read(&mem, "memory.memsw.limit_in_bytes"), "-1");
    assert_eq!(e.memory, Held::Read(Some(MIB)));
    assert_eq!(e.swap, Held::Read(None));
    // Unlimited memory: swap alone cannot be expressed, memsw is unlimited too.
    let e = g.write_limits(&set(None, Some(0), None, None)).unwrap();
    assert_eq!(read(&mem, "memory.limit_in_bytes"), "-1");
    assert_eq!(read(&mem, "memory.memsw.limit_in_bytes"), "-1");
    assert_eq!((e.memory, e.swap), (Held::Read(None), Held::Read(None)));
    // memory + swap saturates instead of wrapping.
    g.write_limits(&set(Some(u64::MAX - 1), Some(10), None, None))
        .unwrap();
    assert_eq!(
        read(&mem, "memory.memsw.limit_in_bytes"),
        u64::MAX.to_string()
    );
    // What the kernel shows for unlimited reads back as unlimited.
    std::fs::write(mem.join("memory.limit_in_bytes"), V1_UNLIMITED).unwrap();
    assert_eq!(g.memory_limit().unwrap(), None);
}

#[test]
fn v1_without_swap_accounting_or_hierarchies() {
    let s = Scratch::new("v1-nomemsw");
    let g = v1_group(
        &s,
        &[("memory", &[("memory.limit_in_bytes", V1_UNLIMITED)])],
    );
    let e = g
        .write_limits(&set(Some(MIB), Some(0), Some(50_000), Some(3)))
        .unwrap();
    assert_eq!(e.memory, Held::Read(Some(MIB)));
    assert!(e.swap.is_absent() && e.cpus.is_absent() && e.pids.is_absent());
    let mem = g.dir("memory").unwrap();
    assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
}

/// The kernel keeps memsw >= memory after every write, so the order matters: memory
/// first when lowering, memsw first when raising memory above the current memsw. A
/// directory in place of `memory.limit_in_bytes` makes that write fail, which shows
/// whether memsw was written before it.
#[test]
fn v1_memsw_order_raising_and_lowering() {
    let s = Scratch::new("v1-order");
    let g = v1_group(
        &s,
        &[("memory", &[("memory.memsw.limit_in_bytes", "104857600\n")])],
    );
    let mem = g.dir("memory").unwrap().to_path_buf();
    std::fs::create_dir(mem.join("memory.limit_in_bytes")).unwrap();

    // Lowering (50 MiB <= current memsw 100 MiB): memory first, so memsw is untouched.
    let e = g
        .write_limits(&set(Some(50 * MIB), Some(0), None, None))
        .unwrap_err();
    assert_eq!(e.limit, LimitKind::Memory);
    assert_eq!(read(&mem, "memory.memsw.limit_in_bytes"), "104857600\n");

    // Raising (200 MiB > 100 MiB): memsw first, so it already holds the new sum.
    let e = g
        .write_limits(&set(Some(200 * MIB), Some(MIB), None, None))
        .unwrap_err();
    assert_eq!(e.limit, LimitKind::Memory);
    assert_eq!(
        read(&mem, "memory.memsw.limit_in_bytes"),
        (201 * MIB).to_string()
    );

    // To unlimited memory under a limited memsw: memsw (unlimited) first.
    std::fs::write(mem.join("memory.memsw.limit_in_bytes"), "104857600\n").unwrap();
    g.write_limits(&set(None, Some(0), None, None)).unwrap_err();
    assert_eq!(read(&mem, "memory.memsw.limit_in_bytes"), "-1");
}
