//! Ending a cgroup tree, on either hierarchy kind: kill every process, wait until none
//! is left, remove the directories. The crash guard, `corral gc`, the sandboxes and the
//! service all end trees this one way.
//!
//! The steps differ by kind and are therefore the trait's: v2 kills a whole subtree at
//! once (`cgroup.kill`, or one freezer round before 5.14) and then waits for
//! `populated 0`; v1 has neither, so [`Group1::kill_all`] repeats freezer rounds until
//! `cgroup.procs` is empty. [`Tree::end_tree`] is the sequence, written once.

use std::time::{Duration, Instant};

use crate::v1::Group1;
use crate::v2::Cgroup2;
use crate::Result;

/// How long each directory's rmdir is retried on EBUSY when a tree is ended (a
/// killed task can hold its cgroup for a moment after it is gone from `cgroup.procs`).
pub const RMDIR_BUDGET: Duration = Duration::from_secs(2);

/// A cgroup tree that can be ended: a v2 cgroup or a v1 group, with its descendants.
pub trait Tree {
    /// How many processes the tree holds now, descendants included.
    fn process_count(&self) -> usize;

    /// Kills every process of the tree with SIGKILL, with no escape by forking. On v1
    /// this also waits (up to `budget`) until the tree is empty; on v2 the kill is one
    /// write and the wait is [`Tree::wait_empty`]'s.
    fn kill_tree(&self, budget: Duration) -> Result<()>;

    /// Waits up to `within` until no process is left; returns whether none is.
    fn wait_empty(&self, within: Duration) -> bool {
        let t = Instant::now();
        let mut delay = Duration::from_millis(1);
        loop {
            if self.process_count() == 0 {
                return true;
            }
            if t.elapsed() >= within {
                return false;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(10));
        }
    }

    /// Removes the tree's directories (deepest first), each rmdir retried on EBUSY
    /// within `budget`. The tree must be empty of processes.
    fn remove_tree(&self, budget: Duration) -> Result<()>;

    /// Ends the tree: kills what is in it, waits up to `within` until it is empty, and
    /// removes it (with [`RMDIR_BUDGET`]). Returns how many processes it found (0: none
    /// to kill). A tree that is already gone is fine. A tree that does not empty in
    /// time fails at the removal, with the path that stayed busy.
    fn end_tree(&self, within: Duration) -> Result<usize> {
        let found = self.process_count();
        if found > 0 {
            self.kill_tree(within)?;
            self.wait_empty(within);
        }
        self.remove_tree(RMDIR_BUDGET)?;
        Ok(found)
    }
}

impl Tree for Cgroup2 {
    /// At least 1 while `cgroup.events` says `populated 1`: a dying task can be gone
    /// from every `cgroup.procs` before the subtree is unpopulated.
    fn process_count(&self) -> usize {
        match self.populated() {
            Ok(false) => 0,
            _ if !self.exists() => 0,
            _ => self
                .subtree()
                .iter()
                .map(|c| c.procs().map(|p| p.len()).unwrap_or(0))
                .sum::<usize>()
                .max(1),
        }
    }

    fn kill_tree(&self, _budget: Duration) -> Result<()> {
        if !self.kill()? {
            self.kill_by_freezing()?;
        }
        Ok(())
    }

    fn remove_tree(&self, budget: Duration) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        self.remove(budget)
    }
}

impl Tree for Group1 {
    fn process_count(&self) -> usize {
        self.pids().len()
    }

    fn kill_tree(&self, budget: Duration) -> Result<()> {
        self.kill_all(budget)
    }

    fn remove_tree(&self, budget: Duration) -> Result<()> {
        self.remove(budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like an empty cgroup v2 (no root needed).
    struct Fake(std::path::PathBuf);

    impl Fake {
        fn new(name: &str) -> Fake {
            let d = std::env::temp_dir().join(format!("corral-tree-{name}-{}", std::process::id()));
            std::fs::create_dir_all(d.join("child")).unwrap();
            for dir in [d.clone(), d.join("child")] {
                std::fs::write(dir.join("cgroup.procs"), "").unwrap();
                std::fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
            }
            Fake(d)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_empty_tree_has_nothing_to_kill() {
        let f = Fake::new("empty");
        let cg = Cgroup2::at(&f.0);
        assert_eq!(cg.process_count(), 0);
        assert!(cg.wait_empty(Duration::ZERO));
    }

    #[test]
    fn a_populated_tree_counts_every_descendant() {
        let f = Fake::new("populated");
        std::fs::write(f.0.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        std::fs::write(f.0.join("child/cgroup.procs"), "10\n11\n").unwrap();
        let cg = Cgroup2::at(&f.0);
        assert_eq!(cg.process_count(), 2);
        assert!(!cg.wait_empty(Duration::from_millis(5)));
    }

    #[test]
    fn a_tree_that_is_gone_is_ended() {
        let cg = Cgroup2::at(std::env::temp_dir().join("corral-tree-never-created"));
        assert_eq!(cg.end_tree(Duration::from_millis(10)).unwrap(), 0);
    }
}
