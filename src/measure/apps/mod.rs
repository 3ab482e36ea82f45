//! Application workloads (issue 12): the real server runs inside the tier, the host drives it
//! through the tier's own network path with the application's own benchmark client, pinned to
//! CPUs outside the tier's budget. So far: [`redis`], [`mysql`].

pub mod mysql;
pub mod redis;

/// The CPUs this process may run on that are not in `budget`: where the benchmark client runs,
/// so it does not compete with the tier for its CPUs. Empty when the budget takes them all.
pub fn client_cpus(budget: &[usize]) -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return vec![];
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false) && !budget.contains(&i))
        .collect()
}
