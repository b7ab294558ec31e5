//! What `run`, `gc` and `serve` share about backends: the `--backend` value (a fixed
//! list, so that clap names the choices for a bad value) and reaping leftovers.

use std::sync::LazyLock;

use clap::builder::PossibleValue;
use clap::ValueEnum;
use corral_run::backend::{Backend, BackendKind};

/// `--backend` of `corral run` and `corral gc`: `auto` (`None`: the strongest the host
/// offers) or one of [`BackendKind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendArg(pub Option<BackendKind>);

/// The backends that can hold the service's budget: `corral serve` refuses the others.
const SERVICE_KINDS: [BackendKind; 2] = [BackendKind::Cgroup2, BackendKind::Cgroup1];

/// `--backend` of `corral serve`: `auto` (`None`: cgroup2 where usable, else cgroup1),
/// `cgroup2` or `cgroup1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceBackendArg(pub Option<BackendKind>);

/// `auto`, then the given kinds.
fn choices<T>(kinds: &[BackendKind], wrap: fn(Option<BackendKind>) -> T) -> Vec<T> {
    std::iter::once(None)
        .chain(kinds.iter().copied().map(Some))
        .map(wrap)
        .collect()
}

fn possible_value(kind: Option<BackendKind>) -> PossibleValue {
    PossibleValue::new(kind.map_or("auto", BackendKind::as_str))
}

impl ValueEnum for BackendArg {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: LazyLock<Vec<BackendArg>> =
            LazyLock::new(|| choices(&BackendKind::ALL, BackendArg));
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(possible_value(self.0))
    }
}

impl ValueEnum for ServiceBackendArg {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: LazyLock<Vec<ServiceBackendArg>> =
            LazyLock::new(|| choices(&SERVICE_KINDS, ServiceBackendArg));
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(possible_value(self.0))
    }
}

/// Reaps leftovers before a run; problems are only logged.
pub fn reap_quietly(backend: &dyn Backend) {
    for r in backend.reap_leftovers() {
        match r.result {
            Ok(()) => tracing::info!("reaped leftover run cgroup {}", r.name),
            Err(e) => tracing::warn!("cannot reap leftover run cgroup {}: {e}", r.name),
        }
    }
    log_reaped_quotas(corral_run::quota::reap_leftovers());
}

/// Logs what a sweep of dead runs' project quotas did.
fn log_reaped_quotas(quotas: Vec<corral_run::quota::ReapedQuota>) {
    for q in quotas {
        match q.result {
            Ok(()) => tracing::info!(
                "reaped the project quota {} of {} left by a dead run",
                q.projid,
                q.path.display()
            ),
            Err(e) => tracing::warn!(
                "cannot reap the project quota {} of {}: {e}",
                q.projid,
                q.path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<T: ValueEnum>() -> Vec<String> {
        T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect()
    }

    #[test]
    fn run_and_gc_accept_auto_and_every_kind() {
        assert_eq!(
            names::<BackendArg>(),
            ["auto", "cgroup2", "systemd", "cgroup1", "rlimit"]
        );
        assert_eq!(BackendArg::from_str("auto", false), Ok(BackendArg(None)));
        for k in BackendKind::ALL {
            assert_eq!(
                BackendArg::from_str(k.as_str(), false),
                Ok(BackendArg(Some(k)))
            );
            assert_eq!(k.as_str().parse::<BackendKind>(), Ok(k));
        }
        assert!(BackendArg::from_str("bogus", false).is_err());
    }

    #[test]
    fn serve_accepts_the_cgroup_backends_only() {
        assert_eq!(names::<ServiceBackendArg>(), ["auto", "cgroup2", "cgroup1"]);
        assert!(ServiceBackendArg::from_str("systemd", false).is_err());
    }
}
