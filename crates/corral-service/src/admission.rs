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
}

impl Budget {
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
}

/// The queue and the reservations of the running runs.
#[derive(Debug)]
pub struct Admission {
    budget: Budget,
    budget_quota: u64,
    queue: BTreeMap<(Reverse<i64>, u64), Waiting>,
    keys: HashMap<String, (Reverse<i64>, u64)>,
    next_seq: u64,
    running: usize,
    reserved: Need,
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
        }
    }

    /// The budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Appends a run to its priority's queue.
    pub fn push(&mut self, id: &str, priority: i64, need: Need) {
        let key = (Reverse(priority), self.next_seq);
        self.next_seq += 1;
        self.queue.insert(
            key,
            Waiting {
                id: id.to_string(),
                need,
            },
        );
        self.keys.insert(id.to_string(), key);
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

    /// Admits the run at the head of the queue if it fits, reserving its share.
    pub fn admit_next(&mut self) -> Option<(String, Need)> {
        let (&key, head) = self.queue.iter().next()?;
        if !self.fits(&head.need) {
            return None;
        }
        let w = self.queue.remove(&key).expect("present");
        self.keys.remove(&w.id);
        self.running += 1;
        self.reserved.memory += w.need.memory;
        self.reserved.cpu_quota += w.need.cpu_quota;
        Some((w.id, w.need))
    }

    /// Releases a finished run's reservation.
    pub fn release(&mut self, need: &Need) {
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
        a.release(&need);
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
            order.push(id);
            assert!(a.admit_next().is_none(), "max_running 1");
            a.release(&n);
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
}
