//! What every role measures the same way: latencies, CPU time, memory, fds, clocks.

use std::time::Duration;

/// CLOCK_MONOTONIC in ns: the same clock in every process on the machine, so a sender's
/// stamp and a receiver's reading give the latency between processes.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time of this process so far, every thread's (CLOCK_PROCESS_CPUTIME_ID).
pub fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Peak resident set size of this process, in KiB.
pub fn peak_rss_kib() -> u64 {
    status_field("VmHWM:")
}

/// Resident set size now, in KiB.
pub fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(name)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

/// p50 and p99 of `samples` (ns), in µs.
pub fn percentiles_us(samples: &mut [u64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    (at(0.50), at(0.99))
}
