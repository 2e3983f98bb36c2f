//! The benchmarks of docs/performance.md, run by `scripts/bench` (`cargo bench --bench
//! qsock`). Every figure is printed beside its baseline, measured in the same run:
//!  1. API level: our Rust sender/receiver (and the C API, when `QSOCK_BENCH_C` names
//!     the built `bench_api_c`) against the floor of bare sendmsg/recvmsg, at 1, 4 and
//!     16 messages in flight;
//!  2. element level: qtisocketsink → qtisocketsrc against shmsink → shmsrc, two
//!     processes, at 320x240 to 7680x4320; shm twice: with upstream writing straight
//!     into shmsink's memory, and with frames from the producer's own pool (copied);
//!  3. scale: 1, 4 and 16 pairs at once; fan-out: one producer, 1 to 8 receivers;
//!  4. soak: 1,000,000 buffers (`QSOCK_BENCH_SOAK` to change), RSS and fds at the start
//!     and the end.
//!
//! Writes target/bench/results.json and target/bench/report.md. With
//! `QSOCK_BENCH_PART=newest-gst`, only the part for a newer GStreamer (newest_gst.rs:
//! unixfdsink → unixfdsrc beside ours), which scripts/bench runs in a Debian 13 root. Every process here is a
//! child of this one (the same binary, `QSOCK_BENCH_ROLE` saying which part it plays).
//! `QSOCK_BENCH_PART=fan-out`: only the fan-out part (fanout.rs), printed, nothing written;
//! `QSOCK_BENCH_PART=api`: only the API part, printed.
//! `QSOCK_BENCH_QUICK=1` shortens every run (a smoke check, not figures).
//! `QSOCK_BENCH_ROUNDS` (default 3; 1 when quick): how often each comparison of the API
//! and element parts runs, its members alternating (see [`alternate`]).

mod api;
mod elements;
mod fanout;
mod measure;
mod newest_gst;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use elements::{RecvReport, SendReport, Transport};
use serde::Serialize;

const SIZES: [(u32, u32); 4] = [(320, 240), (1920, 1080), (3840, 2160), (7680, 4320)];
const IN_FLIGHT: [usize; 3] = [1, 4, 16];
const PAIRS: [usize; 3] = [1, 4, 16];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let Ok(role) = std::env::var("QSOCK_BENCH_ROLE") {
        return play(&role, &args);
    }
    let quick = std::env::var_os("QSOCK_BENCH_QUICK").is_some();
    let run_for = Duration::from_millis(if quick { 300 } else { 2000 });
    let soak_buffers: u64 = std::env::var("QSOCK_BENCH_SOAK").ok().and_then(|n| n.parse().ok()).unwrap_or(if quick {
        20_000
    } else {
        1_000_000
    });
    let dir = std::env::temp_dir().join(format!("qsock-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rounds =
        std::env::var("QSOCK_BENCH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(if quick { 1 } else { 3 });
    if std::env::var("QSOCK_BENCH_PART").as_deref() == Ok("newest-gst") {
        newest_gst::run(&dir, run_for, rounds);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    if std::env::var("QSOCK_BENCH_PART").as_deref() == Ok("pair-1080") {
        pair_1080(&dir, run_for);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    let mut results = Results { machine: machine(), ..Results::default() };
    println!("machine: {}", results.machine);
    if std::env::var("QSOCK_BENCH_PART").as_deref() == Ok("fan-out") {
        fan_out(&dir, run_for, &mut results);
        println!("{}", fanout::markdown(&results.fan_out));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    results.rounds = rounds;
    api_part(&dir, run_for, rounds, &mut results);
    if std::env::var("QSOCK_BENCH_PART").as_deref() == Ok("api") {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    println!("\n== Element level: sender and receiver pipelines in two processes ({rounds} rounds) ==");
    for (width, height) in SIZES {
        let transports = [Transport::Ours, Transport::Shm, Transport::ShmCopy];
        for run in median_pairs(&dir.join("elem"), &transports, (width, height), run_for, rounds) {
            println!("{}", run.line());
            results.elements.push(run);
        }
    }

    println!("\n== A thread reading qtisocketsrc's stats in a loop, 1920x1080 ==");
    let quiet = pair(Transport::Ours, &dir.join("stats-quiet"), 1920, 1080, run_for, None);
    // Inherited by the receiver process that `pair` starts.
    std::env::set_var(elements::STATS_READER_ENV, "1");
    let polled = pair(Transport::Ours, &dir.join("stats-polled"), 1920, 1080, run_for, None);
    std::env::remove_var(elements::STATS_READER_ENV);
    println!(
        "without a reader {:>8.0} buffers/s p50 {:>6.1} µs; with {:.0} stats reads/s {:>8.0} buffers/s ({:.2}x) p50 {:>6.1} µs",
        quiet.per_second(),
        quiet.recv.p50_us,
        polled.recv.stats_reads as f64 / polled.recv.seconds,
        polled.per_second(),
        polled.per_second() / quiet.per_second(),
        polled.recv.p50_us
    );
    results.stats_reader = vec![quiet, polled];

    println!("\n== Scale: pairs at once, 1920x1080, qtisocketsink → qtisocketsrc ==");
    for pairs in PAIRS {
        let scale = scale(&dir, Transport::Ours, pairs, run_for);
        println!(
            "{:>2} pairs: {:>9.0} buffers/s aggregate ({:.2}x 1 pair), {:.1} µs CPU per buffer (both sides)",
            pairs,
            scale.per_second,
            scale.per_second / results.scale.first().map_or(scale.per_second, |s: &ScaleRun| s.per_second),
            scale.cpu_us_per_buffer
        );
        results.scale.push(scale);
    }

    fan_out(&dir, run_for, &mut results);

    println!("\n== Soak: {soak_buffers} buffers, 320x240, qtisocketsink → qtisocketsrc ==");
    let socket = dir.join("soak");
    let soak = pair(Transport::Ours, &socket, 320, 240, run_for, Some(soak_buffers));
    println!(
        "received {} of {} in {:.1} s; receiver (RSS KiB, fds) after 10,000 {:?}, at the end {:?}; sender {:?} → {:?}",
        soak.recv.buffers,
        soak.send.buffers,
        soak.recv.seconds,
        soak.recv.rss_fds_early,
        soak.recv.rss_fds_end,
        soak.send.rss_fds_early,
        soak.send.rss_fds_end
    );
    results.soak = Some(soak);

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&results).unwrap()).unwrap();
    std::fs::write(out.join("report.md"), results.markdown()).unwrap();
    println!("\nwrote {0}/results.json and {0}/report.md", out.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The API part: ours (Rust, pooled, and C when `QSOCK_BENCH_C` names its benchmark)
/// against the floor at each number in flight. `QSOCK_BENCH_PART=api`: only this part.
fn api_part(dir: &Path, run_for: Duration, rounds: usize, results: &mut Results) {
    println!("\n== API level: messages/s and round trip, two processes ({rounds} rounds) ==");
    let c_bench = std::env::var_os("QSOCK_BENCH_C");
    for in_flight in IN_FLIGHT {
        let members = if c_bench.is_some() { 4 } else { 3 };
        let medians = alternate(
            rounds,
            members,
            |round, member| {
                let socket = dir.join(format!("api-{in_flight}-{member}-{round}"));
                let r = match member {
                    0..=2 => {
                        let role = if member == 0 { "floor-recv" } else { "rust-recv" };
                        let child = spawn(role, &[socket.to_str().unwrap()]);
                        let r = match member {
                            0 => api::floor_sender(&socket, in_flight, run_for),
                            _ => api::rust_sender(&socket, in_flight, run_for, member == 2),
                        };
                        let _ = wait(child);
                        r
                    }
                    _ => {
                        let out = Command::new(c_bench.as_ref().unwrap())
                            .args([socket.to_str().unwrap(), &in_flight.to_string(), &run_for.as_millis().to_string()])
                            .output()
                            .unwrap();
                        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                        let line = String::from_utf8_lossy(&out.stdout);
                        serde_json::from_str::<api::ApiResult>(line.trim().lines().last().unwrap()).unwrap()
                    }
                };
                println!("  round {round}: {:<42} {:>9.0} msg/s", r.who, r.per_second);
                r
            },
            |r| r.per_second,
        );
        for r in &medians {
            print_api(r, &medians[0]);
        }
        results.api.extend(medians);
    }
}

/// `QSOCK_BENCH_PART=pair-1080`: only the element pair at 1920x1080, beside the floor (4
/// in flight) and shm, `QSOCK_BENCH_REPEAT` times (default 3), for before/after checks.
/// `QSOCK_BENCH_OTHER` may name another build of this binary: its pair runs alternate
/// with ours, so both are measured in the same run. `QSOCK_BENCH_NO_BASELINES`: the
/// pairs only (shorter rounds).
fn pair_1080(dir: &Path, run_for: Duration) {
    let repeat: usize = std::env::var("QSOCK_BENCH_REPEAT").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    let other = std::env::var_os("QSOCK_BENCH_OTHER");
    let baselines = std::env::var_os("QSOCK_BENCH_NO_BASELINES").is_none();
    println!("machine: {}", machine());
    for round in 0..repeat {
        if baselines {
            let socket = dir.join(format!("p-floor-{round}"));
            let child = spawn("floor-recv", &[socket.to_str().unwrap()]);
            let floor = api::floor_sender(&socket, 4, run_for);
            let _ = wait(child);
            print_api(&floor, &floor);
            let run = pair(Transport::Shm, &dir.join(format!("p-shm-{round}")), 1920, 1080, run_for, None);
            println!("{}", run.line());
        }
        let run = pair(Transport::Ours, &dir.join(format!("p-ours-{round}")), 1920, 1080, run_for, None);
        println!("{}  (this build)", run.line());
        if let Some(other) = &other {
            std::env::set_var("QSOCK_BENCH_EXE", other);
            let run = pair(Transport::Ours, &dir.join(format!("p-other-{round}")), 1920, 1080, run_for, None);
            std::env::remove_var("QSOCK_BENCH_EXE");
            println!("{}  ({})", run.line(), Path::new(other).display());
        }
    }
}

fn print_api(r: &api::ApiResult, floor: &api::ApiResult) {
    println!(
        "{:>2} in flight  {:<42} {:>9.0} msg/s ({:.2}x floor)  p50 {:>7.1} µs ({:.2}x)  p99 {:>7.1} µs",
        r.in_flight,
        r.who,
        r.per_second,
        r.per_second / floor.per_second,
        r.p50_us,
        r.p50_us / floor.p50_us,
        r.p99_us
    );
}

/// The fan-out part (fanout.rs): 1, 2, 4 and 8 receivers, and a stuck one.
fn fan_out(dir: &Path, run_for: Duration, results: &mut Results) {
    println!("\n== Fan-out: one producer, N receivers, 1920x1080 ==");
    for receivers in fanout::RECEIVERS {
        for kind in [fanout::Kind::SocketDir, fanout::Kind::Tee] {
            let run = fanout::run(dir, kind, receivers, false, run_for);
            println!("{}", run.line());
            results.fan_out.push(run);
        }
    }
    for with_stuck in [false, true] {
        let run = fanout::run(dir, fanout::Kind::SocketDirSkip, 2, with_stuck, run_for);
        println!("{}", run.line());
        results.fan_out.push(run);
    }
}

/// This process plays one part, for the parent.
fn play(role: &str, args: &[String]) {
    let socket = Path::new(&args[0]);
    match role {
        "floor-recv" => api::floor_receiver(socket),
        "rust-recv" => api::rust_receiver(socket),
        "elem-recv" => elements::receiver(Transport::parse(&args[1]), socket, Duration::from_millis(1500)),
        "fan-send" => {
            fanout::sender(socket, &args[1], args[2].parse().unwrap(), Duration::from_millis(args[3].parse().unwrap()))
        }
        "fan-stuck" => fanout::stuck_receiver(socket, &args[1]),
        "elem-send" => {
            let number = |i: usize| args[i].parse::<u64>().unwrap();
            let count = (number(5) > 0).then(|| number(5));
            elements::sender(
                Transport::parse(&args[1]),
                socket,
                number(2) as u32,
                number(3) as u32,
                Duration::from_millis(number(4)),
                count,
            )
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn(role: &str, args: &[&str]) -> Child {
    let exe = std::env::var_os("QSOCK_BENCH_EXE").map_or_else(|| std::env::current_exe().unwrap(), PathBuf::from);
    Command::new(exe).args(args).env("QSOCK_BENCH_ROLE", role).stdout(Stdio::piped()).spawn().unwrap()
}

/// Runs each of `members` comparisons `rounds` times, alternating them within each
/// round (`run(round, member)`), and returns each member's median run by `key` (the
/// lower middle for an even count): a machine whose speed drifts during the bench moves
/// every member alike, and one slow or fast moment moves no row.
fn alternate<T>(
    rounds: usize,
    members: usize,
    mut run: impl FnMut(usize, usize) -> T,
    key: impl Fn(&T) -> f64,
) -> Vec<T> {
    let mut runs: Vec<Vec<T>> = (0..members).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds.max(1) {
        for (member, member_runs) in runs.iter_mut().enumerate() {
            member_runs.push(run(round, member));
        }
    }
    runs.into_iter()
        .map(|mut member_runs| {
            member_runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
            member_runs.swap_remove((member_runs.len() - 1) / 2)
        })
        .collect()
}

/// One pair of each of `transports` at `size`, `rounds` times alternating ([`alternate`]):
/// each one's median run. Sockets under `prefix`, one per run.
fn median_pairs(
    prefix: &Path,
    transports: &[Transport],
    size: (u32, u32),
    run_for: Duration,
    rounds: usize,
) -> Vec<PairRun> {
    let (width, height) = size;
    alternate(
        rounds,
        transports.len(),
        |round, member| {
            let transport = transports[member];
            let socket = format!("{}-{}-{width}-{round}", prefix.display(), transport.name());
            let run = pair(transport, Path::new(&socket), width, height, run_for, None);
            println!("  round {round}: {}", run.line());
            run
        },
        PairRun::per_second,
    )
}

/// Waits for a child and returns its last line of output.
fn wait(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a benchmark process failed");
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned()
}

#[derive(Debug, Clone, Serialize)]
struct PairRun {
    transport: Transport,
    width: u32,
    height: u32,
    send: SendReport,
    recv: RecvReport,
}

impl PairRun {
    fn per_second(&self) -> f64 {
        self.recv.buffers as f64 / self.recv.seconds
    }
    fn line(&self) -> String {
        format!(
            "{:>9} {:<4} {:>8.0} buffers/s  p50 {:>8.1} µs  p99 {:>8.1} µs  CPU/buffer send {:>6.1} µs recv {:>6.1} µs  \
             peak RSS send {:>7} KiB recv {:>7} KiB  ({} sent, {} received, {} out of order)",
            format!("{}x{}", self.width, self.height),
            self.transport.name(),
            self.per_second(),
            self.recv.p50_us,
            self.recv.p99_us,
            self.send.cpu_s * 1e6 / self.send.buffers.max(1) as f64,
            self.recv.cpu_s * 1e6 / self.recv.buffers.max(1) as f64,
            self.send.peak_rss_kib,
            self.recv.peak_rss_kib,
            self.send.buffers,
            self.recv.buffers,
            self.recv.out_of_order
        )
    }
}

struct StartedPair {
    transport: Transport,
    width: u32,
    height: u32,
    receiver: Child,
    sender: Child,
}

impl StartedPair {
    fn finish(self) -> PairRun {
        let send: SendReport = serde_json::from_str(&wait(self.sender)).unwrap();
        let recv: RecvReport = serde_json::from_str(&wait(self.receiver)).unwrap();
        PairRun { transport: self.transport, width: self.width, height: self.height, send, recv }
    }
}

fn start_pair(
    transport: Transport,
    socket: &Path,
    width: u32,
    height: u32,
    run_for: Duration,
    count: Option<u64>,
) -> StartedPair {
    let socket = socket.to_str().unwrap();
    let receiver = spawn("elem-recv", &[socket, transport.name()]);
    let args = [
        socket.to_owned(),
        transport.name().to_owned(),
        width.to_string(),
        height.to_string(),
        run_for.as_millis().to_string(),
        count.unwrap_or(0).to_string(),
    ];
    let sender = spawn("elem-send", &args.iter().map(String::as_str).collect::<Vec<_>>());
    StartedPair { transport, width, height, receiver, sender }
}

fn pair(
    transport: Transport,
    socket: &Path,
    width: u32,
    height: u32,
    run_for: Duration,
    count: Option<u64>,
) -> PairRun {
    start_pair(transport, socket, width, height, run_for, count).finish()
}

/// `pairs` sender/receiver pairs at once, 1920x1080, each on its own socket.
fn scale(dir: &Path, transport: Transport, pairs: usize, run_for: Duration) -> ScaleRun {
    let children: Vec<_> = (0..pairs)
        .map(|i| {
            let socket = dir.join(format!("scale-{}-{pairs}-{i}", transport.name()));
            start_pair(transport, &socket, 1920, 1080, run_for, None)
        })
        .collect();
    let runs: Vec<PairRun> = children.into_iter().map(|c| c.finish()).collect();
    let buffers: u64 = runs.iter().map(|r| r.recv.buffers).sum();
    let seconds = runs.iter().map(|r| r.recv.seconds).fold(0.0, f64::max);
    let cpu: f64 = runs.iter().map(|r| r.recv.cpu_s + r.send.cpu_s).sum();
    ScaleRun {
        pairs,
        buffers,
        per_second: buffers as f64 / seconds,
        cpu_us_per_buffer: cpu * 1e6 / buffers as f64,
        p50_us: runs.iter().map(|r| r.recv.p50_us).sum::<f64>() / pairs as f64,
        p99_us: runs.iter().map(|r| r.recv.p99_us).fold(0.0, f64::max),
    }
}

#[derive(Debug, Clone, Serialize)]
struct ScaleRun {
    pairs: usize,
    buffers: u64,
    per_second: f64,
    cpu_us_per_buffer: f64,
    /// The pairs' mean p50 latency and their largest p99.
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Default, Serialize)]
struct Results {
    machine: String,
    /// How often each API and element comparison ran ([`alternate`]).
    rounds: usize,
    api: Vec<api::ApiResult>,
    elements: Vec<PairRun>,
    scale: Vec<ScaleRun>,
    /// 1920x1080 ours, without and with a thread reading the source's `stats`.
    stats_reader: Vec<PairRun>,
    soak: Option<PairRun>,
    fan_out: Vec<fanout::FanOutRun>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}, {}", kernel.trim(), std::env::consts::ARCH)
}

impl Results {
    fn markdown(&self) -> String {
        let mut md = format!("Machine: {}; {}\n\n", self.machine, gst::version_string());
        md += &format!(
            "Each row of the API and element tables is the median of {} runs (by messages or buffers per \
             second), the rows of one comparison alternating in each round.\n\n",
            self.rounds
        );
        md += "### API level (two processes, one 168-byte record and one fd per message)\n\n";
        md += "| in flight | who | messages/s | × floor | p50 round trip (µs) | × floor | p99 (µs) |\n|---|---|---|---|---|---|---|\n";
        for in_flight in IN_FLIGHT {
            let rows: Vec<_> = self.api.iter().filter(|r| r.in_flight == in_flight).collect();
            let floor = rows.iter().find(|r| r.who.starts_with("floor")).unwrap();
            for r in rows.iter() {
                md += &format!(
                    "| {} | {} | {:.0} | {:.2} | {:.1} | {:.2} | {:.1} |\n",
                    in_flight,
                    r.who,
                    r.per_second,
                    r.per_second / floor.per_second,
                    r.p50_us,
                    r.p50_us / floor.p50_us,
                    r.p99_us
                );
            }
        }
        md += &format!(
            "\n### Element level (two processes, NV12 frames from the sink's proposed pool)\n\n\
             The producer has {} frames at most, whatever the transport (shmsink and unixfdsink propose \
             no pool, and a producer's own pool gets that many; qtisocketsink's, up to 16, is cut to it): \
             the deeper a queue, the longer a frame waits in it once the receiver falls behind.\n\n",
            elements::PAIR_PRODUCER_BUFFERS
        );
        md += "| frame | transport | buffers/s | p50 latency (µs) | p99 (µs) | CPU/buffer sender (µs) | CPU/buffer receiver (µs) | peak RSS sender (MiB) | peak RSS receiver (MiB) |\n|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.elements {
            md += &format!(
                "| {}x{} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                r.width,
                r.height,
                match r.transport {
                    Transport::Ours => "qtisocketsink → qtisocketsrc",
                    Transport::Shm => "shmsink → shmsrc, upstream in shmsink's memory",
                    Transport::ShmCopy => "shmsink → shmsrc, frames copied in",
                    Transport::UnixFd => "unixfdsink → unixfdsrc",
                },
                r.per_second(),
                r.recv.p50_us,
                r.recv.p99_us,
                r.send.cpu_s * 1e6 / r.send.buffers.max(1) as f64,
                r.recv.cpu_s * 1e6 / r.recv.buffers.max(1) as f64,
                r.send.peak_rss_kib as f64 / 1024.0,
                r.recv.peak_rss_kib as f64 / 1024.0
            );
        }
        md += "\n### Scale (1920x1080, pairs at once)\n\n| pairs | buffers/s aggregate | × 1 pair | CPU per buffer, both sides (µs) |\n|---|---|---|---|\n";
        for s in &self.scale {
            md += &format!(
                "| {} | {:.0} | {:.2} | {:.1} |\n",
                s.pairs,
                s.per_second,
                s.per_second / self.scale[0].per_second,
                s.cpu_us_per_buffer
            );
        }
        md += &fanout::markdown(&self.fan_out);
        if let [quiet, polled] = &self.stats_reader[..] {
            md += &format!(
                "\n### A thread reading qtisocketsrc's `stats` in a loop (1920x1080)\n\n| | buffers/s | p50 (µs) | stats reads/s |\n|---|---|---|---|\n\
                 | no reader | {:.0} | {:.1} | 0 |\n| reader | {:.0} ({:.2}×) | {:.1} | {:.0} |\n",
                quiet.per_second(),
                quiet.recv.p50_us,
                polled.per_second(),
                polled.per_second() / quiet.per_second(),
                polled.recv.p50_us,
                polled.recv.stats_reads as f64 / polled.recv.seconds
            );
        }
        if let Some(soak) = &self.soak {
            md += &format!(
                "\n### Soak ({} buffers, 320x240)\n\n| process | RSS after 10,000 (KiB) | RSS at the end (KiB) | fds after 10,000 | fds at the end |\n|---|---|---|---|---|\n\
                 | receiver | {} | {} | {} | {} |\n| sender | {} | {} | {} | {} |\n\nReceived {} of {} buffers, {} out of order, in {:.1} s.\n",
                soak.send.buffers,
                soak.recv.rss_fds_early.0,
                soak.recv.rss_fds_end.0,
                soak.recv.rss_fds_early.1,
                soak.recv.rss_fds_end.1,
                soak.send.rss_fds_early.0,
                soak.send.rss_fds_end.0,
                soak.send.rss_fds_early.1,
                soak.send.rss_fds_end.1,
                soak.recv.buffers,
                soak.send.buffers,
                soak.recv.out_of_order,
                soak.recv.seconds
            );
        }
        md += &self.targets();
        md
    }

    /// Issue #15's targets for GStreamer 1.22, each with its figure and baseline from this
    /// run (the newer GStreamer's are in newest_gst.rs).
    fn targets(&self) -> String {
        let element = |t: Transport, width: u32| self.elements.iter().find(|r| r.transport == t && r.width == width);
        let api = |who: &str, in_flight: usize| {
            self.api.iter().find(|r| r.who.starts_with(who) && r.in_flight == in_flight).map(|r| r.per_second)
        };
        let cpu = |r: &PairRun| {
            (r.send.cpu_s * 1e6 / r.send.buffers.max(1) as f64) + (r.recv.cpu_s * 1e6 / r.recv.buffers.max(1) as f64)
        };
        let mut rows = Vec::new();
        let mut row = |target: &str, measured: String, met: bool| rows.push((target.to_owned(), measured, met));
        if let (Some(ours), Some(shm), Some(floor)) =
            (element(Transport::Ours, 1920), element(Transport::Shm, 1920), api("floor", 4))
        {
            let ratio = ours.per_second() / floor;
            row(
                "1920x1080 pair ≥ 0.6× the floor",
                format!("{ratio:.3}× ({:.0} against {floor:.0}/s)", ours.per_second()),
                ratio >= 0.6,
            );
            let ratio = ours.per_second() / shm.per_second();
            row(
                "1920x1080 pair ≥ 1.0× shm",
                format!("{ratio:.3}× ({:.0} against {:.0}/s)", ours.per_second(), shm.per_second()),
                ratio >= 1.0,
            );
            let ratio = ours.recv.p50_us / shm.recv.p50_us;
            row(
                "p50 no worse than shm's",
                format!("{ratio:.3}× ({:.1} against {:.1} µs)", ours.recv.p50_us, shm.recv.p50_us),
                ratio <= 1.0,
            );
            let ratio = cpu(ours) / cpu(shm);
            row(
                "CPU per buffer, both processes, no more than shm's",
                format!("{ratio:.3}× ({:.1} against {:.1} µs)", cpu(ours), cpu(shm)),
                ratio <= 1.0,
            );
            let floor_p99 =
                self.api.iter().find(|r| r.who.starts_with("floor") && r.in_flight == 4).map_or(f64::NAN, |r| r.p99_us);
            row(
                "p99 ≤ 100 µs at 1920x1080",
                format!("{:.0} µs (the floor's: {floor_p99:.0} µs)", ours.recv.p99_us),
                ours.recv.p99_us <= 100.0,
            );
        }
        if let (Some(small), Some(large)) = (element(Transport::Ours, 320), element(Transport::Ours, 7680)) {
            let ratio = large.per_second() / small.per_second();
            row("flat from 320x240 to 7680x4320 (≥ 0.9×)", format!("{ratio:.3}×"), ratio >= 0.9);
        }
        for in_flight in IN_FLIGHT {
            let Some(floor) = api("floor", in_flight) else { continue };
            for r in self.api.iter().filter(|r| r.in_flight == in_flight && !r.who.starts_with("floor")) {
                let ratio = r.per_second / floor;
                row(
                    &format!("API ≥ 0.9× the floor: {}, {in_flight} in flight", r.who),
                    format!("{ratio:.3}×"),
                    ratio >= 0.9,
                );
            }
        }
        if let Some(soak) = &self.soak {
            for (who, early, end) in [
                ("receiver", soak.recv.rss_fds_early, soak.recv.rss_fds_end),
                ("sender", soak.send.rss_fds_early, soak.send.rss_fds_end),
            ] {
                let grown = end.0 as i64 - early.0 as i64;
                row(
                    &format!("soak: the {who}'s RSS and fds flat (RSS within 1 MiB)"),
                    format!("RSS {grown:+} KiB, fds {} → {}", early.1, end.1),
                    grown < 1024 && end.1 <= early.1,
                );
            }
        }
        let mut md = "\n### Targets (issue #15), from the tables above\n\n| target | this run | met |\n|---|---|---|\n"
            .to_owned();
        for (target, measured, met) in rows {
            md += &format!("| {target} | {measured} | {} |\n", if met { "yes" } else { "**no**" });
        }
        md
    }
}
