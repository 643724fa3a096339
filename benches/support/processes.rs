//! What the benchmarks read off `/proc`: a process's CPU time and RSS, Postgres's CPU time,
//! the machine's busy time. Shared by the gateway's benchmarks (`#[path]`-included: it is
//! bench code, not a crate).

#![allow(dead_code)]

/// VmRSS of `/proc/{pid}`, in KiB.
pub fn rss_kib_of(pid: impl std::fmt::Display) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// CPU time (user + system) of `/proc/{pid}`, in seconds.
pub fn cpu_secs_of(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_cpu_secs(&stat)
}

/// utime + stime of one `/proc/…/stat` line, in seconds (the fields after the command name,
/// which may itself hold spaces and parentheses).
fn stat_cpu_secs(stat: &str) -> f64 {
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU time of every process named `postgres` (the postmaster and all its backends and
/// helpers), in seconds. Backends that exit between two readings take their time with them,
/// so read it across a window in which the gateway's pool keeps its connections.
pub fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .map(|stat| stat_cpu_secs(&stat))
        .sum()
}

/// CPU time the whole machine spent busy (everything but idle and iowait), in seconds.
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}
