//! Admission control: which queued run may start now.
//!
//! Every run reserves its own memory limit and CPU quota from the service budget while
//! it runs. A run starts only when its reservation fits what is left and fewer than
//! `max_running` runs are running. The queue is ordered by priority (higher first),
//! then by submission (FIFO), and it is strict: when the run at the head does not fit,
//! nothing behind it starts, so a large run is never starved by a stream of small ones.
//! A run whose reservation could never fit (its limit exceeds the whole budget, or it
//! has no memory or CPU limit at all) is refused at submission instead.
//!
//! Tasks and swap are shared, not reserved: the runs' parent cgroup caps their sum.
//! A run asking for more swap than the whole swap budget (or for unlimited swap under
//! a finite one) is refused, so the parent never silently gives a run less than its
//! own limit says.
//!
//! **Users share fairly.** Each run belongs to a user (its submitter). Within one
//! priority the queue interleaves users in rounds: a user's n-th waiting run comes in
//! round n (counted from the round being admitted now when the user had nothing
//! waiting), so a user with 500 queued runs does not hold back another user's one. For
//! a single user this is plain FIFO. With `--user-max-running N`, a user's run whose
//! user already runs N waits, and the runs of other users behind it may start: the
//! strict head rule applies to the first run whose user is under its cap.
//!
//! CPU amounts are kept in microseconds of quota per 100 ms period (the unit the kernel
//! takes), so sums are exact.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use corral_run::backend::cpu_quota_us;
use corral_spec::{format_bytes, Limits};

/// The service budget and the concurrency bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Memory shared by all runs, in bytes.
    pub memory: u64,
    /// CPUs shared by all runs.
    pub cpus: f64,
    /// Tasks shared by all runs (enforced by the parent cgroup, not reserved).
    pub pids: u64,
    /// Swap shared by all runs in bytes, `None` for no cap (enforced by the parent
    /// cgroup, not reserved).
    pub swap: Option<u64>,
    /// Runs at once.
    pub max_running: usize,
}

/// What one run reserves while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// Its memory limit in bytes.
    pub memory: u64,
    /// Its CPU quota in µs per 100 ms.
    pub cpu_quota: u64,
}

impl Need {
    /// The CPUs of the quota.
    pub fn cpus(&self) -> f64 {
        self.cpu_quota as f64 / corral_run::backend::CPU_PERIOD_US as f64
    }
}

fn cpus_text(c: f64) -> String {
    let s = format!("{c:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Why a run could never be admitted under a budget (the message of a 422).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NeedError {
    /// The run has no memory limit.
    #[error(
        "the run has no memory limit, so it could use the service's whole {} budget; give it \
         a memory limit (e.g. \"limits\": {{\"memory\": \"512M\"}})",
        format_bytes(*.budget)
    )]
    NoMemoryLimit {
        /// The memory budget in bytes.
        budget: u64,
    },
    /// The run's memory limit is larger than the whole memory budget.
    #[error(
        "the run's memory limit {} exceeds the service's whole memory budget of {}",
        format_bytes(*.limit),
        format_bytes(*.budget)
    )]
    MemoryOverBudget {
        /// The run's limit in bytes.
        limit: u64,
        /// The memory budget in bytes.
        budget: u64,
    },
    /// The run has no CPU limit.
    #[error(
        "the run has no CPU limit, so it could use all of the service's {} CPU budget; give \
         it a CPU limit (e.g. \"limits\": {{\"cpus\": 0.5}})",
        cpus_text(*.budget)
    )]
    NoCpuLimit {
        /// The CPU budget.
        budget: f64,
    },
    /// The run's CPU limit is larger than the whole CPU budget.
    #[error(
        "the run's CPU limit of {} CPUs exceeds the service's whole CPU budget of {}",
        cpus_text(*.limit),
        cpus_text(*.budget)
    )]
    CpuOverBudget {
        /// The run's limit in CPUs.
        limit: f64,
        /// The CPU budget.
        budget: f64,
    },
    /// The run's swap is unlimited under a finite swap budget.
    #[error(
        "the run's swap is unlimited, but the service's whole swap budget is {}; give it a \
         swap limit (e.g. \"limits\": {{\"swap\": \"0\"}})",
        format_bytes(*.budget)
    )]
    UnlimitedSwap {
        /// The swap budget in bytes.
        budget: u64,
    },
    /// The run's swap limit is larger than the whole swap budget.
    #[error(
        "the run's swap limit {} exceeds the service's whole swap budget of {} (corral serve \
         --budget-swap)",
        format_bytes(*.limit),
        format_bytes(*.budget)
    )]
    SwapOverBudget {
        /// The run's limit in bytes.
        limit: u64,
        /// The swap budget in bytes.
        budget: u64,
    },
    /// The run's memory limit is larger than one user's memory budget.
    #[error(
        "the run's memory limit {} exceeds the service's memory budget per user of {} \
         (corral serve --user-budget-memory)",
        format_bytes(*.limit),
        format_bytes(*.budget)
    )]
    UserMemoryOverBudget {
        /// The run's limit in bytes.
        limit: u64,
        /// The per-user budget in bytes.
        budget: u64,
    },
    /// The run's CPU limit is larger than one user's CPU budget.
    #[error(
        "the run's CPU limit of {} CPUs exceeds the service's CPU budget per user of {} \
         (corral serve --user-budget-cpus)",
        cpus_text(*.limit),
        cpus_text(*.budget)
    )]
    UserCpuOverBudget {
        /// The run's limit in CPUs.
        limit: f64,
        /// The per-user budget in CPUs.
        budget: f64,
    },
}

/// What one user's running runs may reserve together (`--user-budget-memory`,
/// `--user-budget-cpus`), and how many may run (`--user-max-running`); `None`: no cap.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UserCaps {
    /// Runs at once.
    pub max_running: Option<usize>,
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPUs.
    pub cpus: Option<f64>,
}

impl Budget {
    /// A budget nothing reaches: under the Slurm executor the scheduler decides when
    /// runs start, so the service admits each at once (a run still needs a memory and
    /// a CPU limit: they become its job's `--mem` and `--cpus-per-task`).
    pub fn unbounded() -> Budget {
        Budget {
            memory: 1 << 60,
            cpus: 1e6,
            pids: 1 << 30,
            swap: None,
            max_running: 1 << 30,
        }
    }

    /// What a run with `limits` would reserve, or why it can never be admitted.
    pub fn need(&self, limits: &Limits) -> Result<Need, NeedError> {
        let memory = match limits.memory {
            None => {
                return Err(NeedError::NoMemoryLimit {
                    budget: self.memory,
                })
            }
            Some(m) if m > self.memory => {
                return Err(NeedError::MemoryOverBudget {
                    limit: m,
                    budget: self.memory,
                })
            }
            Some(m) => m,
        };
        let budget_quota = cpu_quota_us(self.cpus);
        let cpu_quota = match limits.cpus {
            None => return Err(NeedError::NoCpuLimit { budget: self.cpus }),
            Some(c) if cpu_quota_us(c) > budget_quota => {
                return Err(NeedError::CpuOverBudget {
                    limit: c,
                    budget: self.cpus,
                })
            }
            Some(c) => cpu_quota_us(c),
        };
        if let Some(budget) = self.swap {
            match limits.swap {
                None => return Err(NeedError::UnlimitedSwap { budget }),
                Some(s) if s > budget => {
                    return Err(NeedError::SwapOverBudget { limit: s, budget })
                }
                Some(_) => {}
            }
        }
        Ok(Need { memory, cpu_quota })
    }
}

#[derive(Debug, Clone)]
struct Waiting {
    id: String,
    need: Need,
    owner: u32,
}

/// A queue position: priority (higher first), the owner's round, submission order.
type Key = (Reverse<i64>, u64, u64);

/// The queue and the reservations of the running runs.
#[derive(Debug)]
pub struct Admission {
    budget: Budget,
    budget_quota: u64,
    queue: BTreeMap<Key, Waiting>,
    keys: HashMap<String, Key>,
    next_seq: u64,
    running: usize,
    reserved: Need,
    /// Each user's last round in the queue.
    last_round: HashMap<u32, u64>,
    /// The round of the run admitted last.
    floor: u64,
    /// The owners of admitted runs, and how many each user runs.
    admitted: HashMap<String, u32>,
    running_by: HashMap<u32, usize>,
    reserved_by: HashMap<u32, Need>,
    caps: UserCaps,
}

impl Admission {
    /// An empty queue under `budget`.
    pub fn new(budget: Budget) -> Admission {
        Admission {
            budget,
            budget_quota: cpu_quota_us(budget.cpus),
            queue: BTreeMap::new(),
            keys: HashMap::new(),
            next_seq: 0,
            running: 0,
            reserved: Need::default(),
            last_round: HashMap::new(),
            floor: 0,
            admitted: HashMap::new(),
            running_by: HashMap::new(),
            reserved_by: HashMap::new(),
            caps: UserCaps::default(),
        }
    }

    /// The per-user caps.
    pub fn with_user_caps(mut self, caps: UserCaps) -> Admission {
        self.caps = caps;
        self
    }

    /// Why a run reserving `need` could never start under the per-user caps.
    pub fn check_user_need(&self, need: &Need) -> Result<(), NeedError> {
        if let Some(budget) = self.caps.memory.filter(|&m| need.memory > m) {
            return Err(NeedError::UserMemoryOverBudget {
                limit: need.memory,
                budget,
            });
        }
        if let Some(budget) = self.caps.cpus.filter(|&c| need.cpu_quota > cpu_quota_us(c)) {
            return Err(NeedError::UserCpuOverBudget {
                limit: need.cpus(),
                budget,
            });
        }
        Ok(())
    }

    /// The budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Appends a run of root's to its priority's queue.
    pub fn push(&mut self, id: &str, priority: i64, need: Need) {
        self.push_owned(id, priority, need, 0);
    }

    /// Appends a run of `owner`'s to its priority's queue, in the owner's next round.
    pub fn push_owned(&mut self, id: &str, priority: i64, need: Need, owner: u32) {
        let last = self.last_round.get(&owner).copied().unwrap_or(0);
        let round = (last + 1).max(self.floor);
        self.last_round.insert(owner, round);
        let key = (Reverse(priority), round, self.next_seq);
        self.next_seq += 1;
        self.queue.insert(
            key,
            Waiting {
                id: id.to_string(),
                need,
                owner,
            },
        );
        self.keys.insert(id.to_string(), key);
    }

    /// The per-user caps.
    pub fn user_caps(&self) -> UserCaps {
        self.caps
    }

    /// Each user with runs running or waiting: (uid, running, queued, reserved).
    pub fn by_user(&self) -> Vec<(u32, usize, usize, Need)> {
        let mut users: BTreeMap<u32, (usize, usize, Need)> = BTreeMap::new();
        for (&u, &n) in &self.running_by {
            users.entry(u).or_default().0 = n;
        }
        for (&u, &r) in &self.reserved_by {
            users.entry(u).or_default().2 = r;
        }
        for w in self.queue.values() {
            users.entry(w.owner).or_default().1 += 1;
        }
        users
            .into_iter()
            .map(|(u, (r, q, n))| (u, r, q, n))
            .collect()
    }

    /// How many runs `owner` runs now.
    pub fn running_of(&self, owner: u32) -> usize {
        self.running_by.get(&owner).copied().unwrap_or(0)
    }

    /// True when `owner`'s run reserving `need` must wait for the owner's own runs.
    fn capped(&self, owner: u32, need: &Need) -> bool {
        let used = self.reserved_by.get(&owner).copied().unwrap_or_default();
        self.caps
            .max_running
            .is_some_and(|n| self.running_of(owner) >= n)
            || self
                .caps
                .memory
                .is_some_and(|m| used.memory + need.memory > m)
            || self
                .caps
                .cpus
                .is_some_and(|c| used.cpu_quota + need.cpu_quota > cpu_quota_us(c))
    }

    /// Takes a queued run out of the queue (cancelled); false when it is not queued.
    pub fn remove(&mut self, id: &str) -> bool {
        match self.keys.remove(id) {
            Some(k) => self.queue.remove(&k).is_some(),
            None => false,
        }
    }

    /// True when `id` is waiting.
    pub fn is_queued(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// True when `need` fits next to what runs now.
    pub fn fits(&self, need: &Need) -> bool {
        self.running < self.budget.max_running
            && self.reserved.memory + need.memory <= self.budget.memory
            && self.reserved.cpu_quota + need.cpu_quota <= self.budget_quota
    }

    /// Admits the first queued run whose user is under its cap, if it fits, reserving
    /// its share.
    pub fn admit_next(&mut self) -> Option<(String, Need)> {
        let (&key, head) = self
            .queue
            .iter()
            .find(|(_, w)| !self.capped(w.owner, &w.need))?;
        if !self.fits(&head.need) {
            return None;
        }
        let w = self.queue.remove(&key).expect("present");
        self.keys.remove(&w.id);
        self.floor = self.floor.max(key.1);
        self.running += 1;
        *self.running_by.entry(w.owner).or_default() += 1;
        self.admitted.insert(w.id.clone(), w.owner);
        let r = self.reserved_by.entry(w.owner).or_default();
        r.memory += w.need.memory;
        r.cpu_quota += w.need.cpu_quota;
        self.reserved.memory += w.need.memory;
        self.reserved.cpu_quota += w.need.cpu_quota;
        Some((w.id, w.need))
    }

    /// Releases a finished run's reservation.
    pub fn release(&mut self, id: &str, need: &Need) {
        if let Some(owner) = self.admitted.remove(id) {
            if let Some(n) = self.running_by.get_mut(&owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.running_by.remove(&owner);
                    self.reserved_by.remove(&owner);
                }
            }
            if let Some(r) = self.reserved_by.get_mut(&owner) {
                r.memory = r.memory.saturating_sub(need.memory);
                r.cpu_quota = r.cpu_quota.saturating_sub(need.cpu_quota);
            }
        }
        self.running = self.running.saturating_sub(1);
        self.reserved.memory = self.reserved.memory.saturating_sub(need.memory);
        self.reserved.cpu_quota = self.reserved.cpu_quota.saturating_sub(need.cpu_quota);
    }

    /// Runs waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Runs admitted and not yet released.
    pub fn running(&self) -> usize {
        self.running
    }

    /// The sum of the running runs' reservations.
    pub fn reserved(&self) -> Need {
        self.reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn budget() -> Budget {
        Budget {
            memory: G,
            cpus: 2.0,
            pids: 4096,
            swap: Some(0),
            max_running: 8,
        }
    }

    fn limits(mem: Option<u64>, cpus: Option<f64>) -> Limits {
        Limits {
            memory: mem,
            cpus,
            swap: Some(0),
            ..Limits::default()
        }
    }

    #[test]
    fn refusals() {
        let b = budget();
        assert!(b.need(&limits(Some(G), Some(2.0))).is_ok());
        let e = b
            .need(&limits(Some(2 * G), Some(1.0)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2.0 GiB exceeds") && e.contains("1.0 GiB"),
            "{e}"
        );
        let e = b.need(&limits(None, Some(1.0))).unwrap_err().to_string();
        assert!(e.contains("no memory limit"), "{e}");
        let e = b.need(&limits(Some(G), None)).unwrap_err().to_string();
        assert!(e.contains("no CPU limit"), "{e}");
        let e = b.need(&limits(Some(G), Some(2.5))).unwrap_err().to_string();
        assert!(
            e.contains("2.5 CPUs exceeds") && e.contains("budget of 2"),
            "{e}"
        );
    }

    /// The refusals are what a client reads in a 422: the same sentences as before
    /// they were typed.
    #[test]
    fn refusal_messages() {
        let cases = [
            (
                NeedError::NoMemoryLimit { budget: G },
                "the run has no memory limit, so it could use the service's whole 1.0 GiB \
                 budget; give it a memory limit (e.g. \"limits\": {\"memory\": \"512M\"})",
            ),
            (
                NeedError::MemoryOverBudget {
                    limit: 2 * G,
                    budget: G,
                },
                "the run's memory limit 2.0 GiB exceeds the service's whole memory budget of \
                 1.0 GiB",
            ),
            (
                NeedError::NoCpuLimit { budget: 2.0 },
                "the run has no CPU limit, so it could use all of the service's 2 CPU budget; \
                 give it a CPU limit (e.g. \"limits\": {\"cpus\": 0.5})",
            ),
            (
                NeedError::CpuOverBudget {
                    limit: 2.5,
                    budget: 2.0,
                },
                "the run's CPU limit of 2.5 CPUs exceeds the service's whole CPU budget of 2",
            ),
            (
                NeedError::UnlimitedSwap { budget: 0 },
                "the run's swap is unlimited, but the service's whole swap budget is 0 B; give \
                 it a swap limit (e.g. \"limits\": {\"swap\": \"0\"})",
            ),
            (
                NeedError::SwapOverBudget {
                    limit: G,
                    budget: 0,
                },
                "the run's swap limit 1.0 GiB exceeds the service's whole swap budget of 0 B \
                 (corral serve --budget-swap)",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn swap_within_the_swap_budget() {
        let with_swap = |s: Option<u64>| Limits {
            swap: s,
            ..limits(Some(G / 4), Some(0.5))
        };
        let b = budget();
        assert!(b.need(&with_swap(Some(0))).is_ok());
        let e = b.need(&with_swap(Some(G))).unwrap_err().to_string();
        assert!(
            e.contains("swap limit 1.0 GiB exceeds") && e.contains("--budget-swap"),
            "{e}"
        );
        let e = b.need(&with_swap(None)).unwrap_err().to_string();
        assert!(e.contains("swap is unlimited"), "{e}");
        let b = Budget {
            swap: Some(2 * G),
            ..budget()
        };
        assert!(b.need(&with_swap(Some(G))).is_ok());
        let b = Budget {
            swap: None,
            ..budget()
        };
        assert!(b.need(&with_swap(None)).is_ok());
    }

    #[test]
    fn memory_bounds_concurrency() {
        let mut a = Admission::new(budget());
        let need = budget().need(&limits(Some(512 << 20), Some(0.1))).unwrap();
        for i in 0..5 {
            a.push(&format!("r{i}"), 0, need);
        }
        assert_eq!(a.admit_next().unwrap().0, "r0");
        assert_eq!(a.admit_next().unwrap().0, "r1");
        assert!(
            a.admit_next().is_none(),
            "a third 512M run does not fit in 1G"
        );
        assert_eq!((a.running(), a.queued()), (2, 3));
        a.release("r0", &need);
        assert_eq!(a.admit_next().unwrap().0, "r2");
        assert!(a.admit_next().is_none());
    }

    #[test]
    fn priority_fifo_strict_head_and_cancel() {
        let mut a = Admission::new(Budget {
            max_running: 1,
            ..budget()
        });
        let small = Need {
            memory: 1,
            cpu_quota: 1000,
        };
        a.push("low1", 0, small);
        a.push("low2", 0, small);
        a.push("high", 5, small);
        a.push("neg", -1, small);
        assert!(a.remove("low2"));
        assert!(!a.remove("low2"));
        let mut order = Vec::new();
        while let Some((id, n)) = a.admit_next() {
            assert!(a.admit_next().is_none(), "max_running 1");
            a.release(&id, &n);
            order.push(id);
        }
        assert_eq!(order, ["high", "low1", "neg"]);
        // A head that does not fit blocks those behind it.
        let mut a = Admission::new(budget());
        let big = Need {
            memory: G,
            cpu_quota: 1000,
        };
        a.push("big1", 0, big);
        a.push("big2", 0, big);
        a.push("small", 0, small);
        assert_eq!(a.admit_next().unwrap().0, "big1");
        assert!(a.admit_next().is_none(), "small waits behind big2");
        assert!(a.is_queued("small"));
        // CPU quota is a bound too.
        let mut a = Admission::new(budget());
        let cpu = Need {
            memory: 1,
            cpu_quota: 150_000,
        };
        a.push("c1", 0, cpu);
        a.push("c2", 0, cpu);
        assert!(a.admit_next().is_some());
        assert!(a.admit_next().is_none(), "1.5 + 1.5 CPUs > 2");
        assert_eq!(a.reserved().cpus(), 1.5);
    }

    /// Admits and releases one run at a time (max_running 1): the order runs start in.
    fn start_order(a: &mut Admission) -> Vec<String> {
        let mut order = Vec::new();
        while let Some((id, n)) = a.admit_next() {
            a.release(&id, &n);
            order.push(id);
        }
        order
    }

    /// A user with many queued runs does not hold back another user's: users take
    /// turns within a priority, each in its own FIFO order; a single user is plain FIFO.
    #[test]
    fn users_take_turns() {
        let one = Budget {
            max_running: 1,
            ..budget()
        };
        let small = Need {
            memory: 1 << 20,
            cpu_quota: 1000,
        };
        let mut a = Admission::new(one);
        for i in 0..4 {
            a.push_owned(&format!("x{i}"), 0, small, 1001);
        }
        a.push_owned("y0", 0, small, 1002);
        a.push_owned("y1", 0, small, 1002);
        a.push_owned("z-high", 3, small, 1003);
        assert_eq!(
            start_order(&mut a),
            ["z-high", "x0", "y0", "x1", "y1", "x2", "x3"]
        );
        // A late arrival is not put behind a long backlog: it joins the round being
        // admitted, so it starts next.
        let mut a = Admission::new(one);
        for i in 0..5 {
            a.push_owned(&format!("x{i}"), 0, small, 1001);
        }
        let (id, n) = a.admit_next().unwrap();
        a.release(&id, &n);
        let (id, n) = a.admit_next().unwrap();
        a.release(&id, &n);
        a.push_owned("late", 0, small, 1002);
        assert_eq!(start_order(&mut a), ["late", "x2", "x3", "x4"]);
        // One user: FIFO, as before.
        let mut a = Admission::new(one);
        for i in 0..4 {
            a.push(&format!("r{i}"), 0, small);
        }
        assert_eq!(start_order(&mut a), ["r0", "r1", "r2", "r3"]);
    }

    /// Over its cap, a user's run waits and another user's runs behind it start; the
    /// strict head rule holds for the first run whose user is under its cap.
    #[test]
    fn user_max_running() {
        let small = Need {
            memory: 1 << 20,
            cpu_quota: 1000,
        };
        let mut a = Admission::new(budget()).with_user_caps(UserCaps {
            max_running: Some(2),
            ..UserCaps::default()
        });
        for i in 0..4 {
            a.push_owned(&format!("x{i}"), 5, small, 1001);
        }
        a.push_owned("y0", 0, small, 1002);
        let mut started = Vec::new();
        while let Some((id, _)) = a.admit_next() {
            started.push(id);
        }
        assert_eq!(started, ["x0", "x1", "y0"], "x2 and x3 wait for x's cap");
        assert_eq!((a.running_of(1001), a.running_of(1002)), (2, 1));
        a.release("x0", &small);
        assert_eq!(a.admit_next().unwrap().0, "x2");
        assert!(a.admit_next().is_none());
        // The first run under its cap that does not fit holds the rest back.
        let mut a = Admission::new(budget()).with_user_caps(UserCaps {
            max_running: Some(1),
            ..UserCaps::default()
        });
        let big = Need {
            memory: G,
            cpu_quota: 1000,
        };
        a.push_owned("x0", 0, small, 1001);
        a.push_owned("x1", 0, small, 1001);
        a.push_owned("y-big", 0, big, 1002);
        a.push_owned("z0", 0, small, 1003);
        assert_eq!(a.admit_next().unwrap().0, "x0");
        assert!(
            a.admit_next().is_none(),
            "y-big is first under its cap and does not fit: z0 waits behind it"
        );
    }

    /// A user whose running runs reserve its memory or CPU budget waits; a run larger
    /// than a user's budget could never start and is refused.
    #[test]
    fn user_budgets() {
        let caps = UserCaps {
            max_running: None,
            memory: Some(G / 2),
            cpus: Some(1.0),
        };
        let mut a = Admission::new(budget()).with_user_caps(caps);
        let quarter = Need {
            memory: G / 4,
            cpu_quota: cpu_quota_us(0.25),
        };
        for i in 0..3 {
            a.push_owned(&format!("x{i}"), 0, quarter, 1001);
        }
        a.push_owned("y0", 0, quarter, 1002);
        let mut started = Vec::new();
        while let Some((id, _)) = a.admit_next() {
            started.push(id);
        }
        assert_eq!(started, ["x0", "y0", "x1"], "x2 would exceed x's 512 MiB");
        assert_eq!(
            a.by_user(),
            vec![
                (
                    1001,
                    2,
                    1,
                    Need {
                        memory: G / 2,
                        cpu_quota: cpu_quota_us(0.5)
                    }
                ),
                (1002, 1, 0, quarter)
            ]
        );
        a.release("x0", &quarter);
        assert_eq!(a.admit_next().unwrap().0, "x2");
        assert!(a.check_user_need(&quarter).is_ok());
        let e = a
            .check_user_need(&Need {
                memory: G,
                cpu_quota: 0,
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the run's memory limit 1.0 GiB exceeds the service's memory budget per user of \
             512 MiB (corral serve --user-budget-memory)"
        );
        let e = a
            .check_user_need(&Need {
                memory: 1,
                cpu_quota: cpu_quota_us(1.5),
            })
            .unwrap_err();
        assert!(matches!(e, NeedError::UserCpuOverBudget { .. }), "{e}");
    }
}
