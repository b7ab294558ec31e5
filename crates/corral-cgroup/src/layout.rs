//! What cgroup hierarchies a host has mounted, and where a process sits in them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util;

/// The v1 controllers corral uses.
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer", "blkio"];

/// The host's cgroup layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// Only cgroup2 (the unified hierarchy).
    Unified,
    /// v1 controller hierarchies beside a cgroup2 mount, which then usually has no
    /// controllers (systemd's "hybrid" mode; these development machines).
    Hybrid,
    /// v1 controller hierarchies only.
    Legacy,
    /// No cgroup file system is mounted.
    None,
}

impl LayoutKind {
    /// A short name for records and `corral check`: `v2`, `hybrid`, `v1`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutKind::Unified => "v2",
            LayoutKind::Hybrid => "hybrid",
            LayoutKind::Legacy => "v1",
            LayoutKind::None => "none",
        }
    }
}

/// One mounted cgroup file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup path that the mount's root corresponds to (usually `/`; differs in
    /// containers with a cgroup namespace or bind mounts).
    pub root: PathBuf,
    /// For v1: the controllers of this hierarchy (`cpu`, `cpuacct`, ...). Empty for v2.
    pub controllers: Vec<String>,
}

/// Everything corral needs to know about the host's cgroup mounts.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// The cgroup2 mount, if any.
    pub v2: Option<Mount>,
    /// v1 hierarchies by controller name (a co-mounted `cpu,cpuacct` appears twice).
    pub v1: BTreeMap<String, Mount>,
    /// The controllers the cgroup2 root offers (`cgroup.controllers`).
    pub v2_controllers: Vec<String>,
}

impl Layout {
    /// The layout, detected once per process (mounts do not change under a run).
    pub fn cached() -> &'static Layout {
        static LAYOUT: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
        LAYOUT.get_or_init(Layout::detect)
    }

    /// The [`crate::v2::REQUIRED_CONTROLLERS`] that the cgroup2 root does not offer.
    pub fn missing_v2_controllers(&self) -> Vec<&'static str> {
        crate::v2::REQUIRED_CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !self.v2_controllers.iter().any(|x| x == c))
            .collect()
    }

    /// Reads `/proc/self/mountinfo`.
    pub fn detect() -> Layout {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut layout = Self::from_mountinfo(&text);
        if let Some(m) = &layout.v2 {
            layout.v2_controllers = util::read(&m.mount_point.join("cgroup.controllers"))
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
        }
        layout
    }

    /// Parses mountinfo text (without reading controllers; see [`Layout::detect`]).
    pub fn from_mountinfo(text: &str) -> Layout {
        let mut layout = Layout::default();
        for line in text.lines() {
            // id parent maj:min root mount-point options [optional...] - fstype source superopts
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let f: Vec<&str> = left.split_whitespace().collect();
            let r: Vec<&str> = right.split_whitespace().collect();
            if f.len() < 5 || r.is_empty() {
                continue;
            }
            let root = PathBuf::from(unescape(f[3]));
            let mount_point = PathBuf::from(unescape(f[4]));
            match r[0] {
                // The first cgroup2 mount wins, as for the kernel's own lookups.
                "cgroup2" if layout.v2.is_none() => {
                    layout.v2 = Some(Mount {
                        mount_point,
                        root,
                        controllers: Vec::new(),
                    });
                }
                "cgroup" => {
                    let opts = r.get(2).copied().unwrap_or("");
                    let controllers: Vec<String> = opts
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o))
                        .map(str::to_string)
                        .collect();
                    for c in &controllers {
                        layout.v1.entry(c.clone()).or_insert_with(|| Mount {
                            mount_point: mount_point.clone(),
                            root: root.clone(),
                            controllers: controllers.clone(),
                        });
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// The layout kind.
    pub fn kind(&self) -> LayoutKind {
        match (self.v1.is_empty(), self.v2.is_some()) {
            (false, true) => LayoutKind::Hybrid,
            (false, false) => LayoutKind::Legacy,
            (true, true) => LayoutKind::Unified,
            (true, false) => LayoutKind::None,
        }
    }
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a process sits: the v2 path and the v1 path per controller, from
/// `/proc/PID/cgroup` (paths are relative to the hierarchy's root, starting with `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The path in the unified hierarchy (`0::/path`).
    pub v2: Option<PathBuf>,
    /// The path per v1 controller.
    pub v1: BTreeMap<String, PathBuf>,
}

impl Membership {
    /// Reads `/proc/self/cgroup`.
    pub fn current() -> Membership {
        Self::of_file(Path::new("/proc/self/cgroup"))
    }

    /// Reads `/proc/<pid>/cgroup`.
    pub fn of_pid(pid: i32) -> Membership {
        Self::of_file(&PathBuf::from(format!("/proc/{pid}/cgroup")))
    }

    fn of_file(p: &Path) -> Membership {
        Self::parse(&std::fs::read_to_string(p).unwrap_or_default())
    }

    /// Parses the text of a `/proc/PID/cgroup` file.
    pub fn parse(text: &str) -> Membership {
        let mut m = Membership::default();
        for line in text.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if id == "0" && ctrls.is_empty() {
                m.v2 = Some(PathBuf::from(path));
            } else {
                for c in ctrls.split(',') {
                    if V1_CONTROLLERS.contains(&c) {
                        m.v1.insert(c.to_string(), PathBuf::from(path));
                    }
                }
            }
        }
        m
    }
}

/// Joins a hierarchy-relative cgroup path (`/a/b`) onto a mount.
pub fn join_rel(mount: &Mount, rel: &Path) -> PathBuf {
    let rel = rel.strip_prefix(&mount.root).unwrap_or(rel);
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    mount.mount_point.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:25 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
30 25 0:28 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
31 25 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
32 25 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout() {
        let l = Layout::from_mountinfo(HYBRID);
        assert_eq!(l.kind(), LayoutKind::Hybrid);
        assert_eq!(
            l.v1["memory"].mount_point,
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert!(!l.v1.contains_key("systemd"));
        assert_eq!(
            l.v2.as_ref().unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn comounted_and_unified() {
        let l = Layout::from_mountinfo(
            "30 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        assert_eq!(l.kind(), LayoutKind::Legacy);
        assert_eq!(l.v1["cpu"].mount_point, l.v1["cpuacct"].mount_point);
        assert_eq!(l.v1["cpu"].controllers, vec!["cpu", "cpuacct"]);
        let mut l = Layout::from_mountinfo("30 25 0:28 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        l.v2_controllers = vec!["memory".into()];
        assert_eq!(l.kind(), LayoutKind::Unified);
        assert_eq!(Layout::from_mountinfo("").kind(), LayoutKind::None);
    }

    #[test]
    fn membership() {
        let m = Membership::parse(
            "9:name=systemd:/\n4:memory:/a/b\n1:cpu,cpuacct:/c\n0::/user.slice/x\n",
        );
        assert_eq!(m.v2, Some(PathBuf::from("/user.slice/x")));
        assert_eq!(m.v1["memory"], PathBuf::from("/a/b"));
        assert_eq!(m.v1["cpuacct"], PathBuf::from("/c"));
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
