//! The part for a newer GStreamer: `scripts/bench` runs this binary a second time inside
//! the Debian 13 root of `scripts/newest-gst` (GStreamer 1.26, `QSOCK_BENCH_PART=
//! newest-gst`), for unixfdsink → unixfdsrc, which Debian 12's 1.22 lacks, beside ours
//! on the same runtime, measured the same way (elements.rs: frames from the pool or
//! allocator the sink proposes, latency from a stamp in each frame read at the receiver):
//!  1. one pair at 320x240, 1920x1080 and 7680x4320, ours and unixfd;
//!  2. 1, 4 and 16 pairs at once, 1920x1080, ours and unixfd;
//!  3. fan-out: one producer feeding 1, 2, 4 and 8 receivers, each getting every frame:
//!     one unixfdsink serving N unixfdsrc clients (it keeps a frame until every client
//!     has released it) beside one qtisocketsink socket-dir (fanout.rs).
//!
//! Writes target/bench/newest-gst.json and target/bench/newest-gst.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::elements::{RecvReport, SendReport, Transport, PAIR_PRODUCER_BUFFERS};
use crate::fanout::{self, FanOutRun, Kind};
use crate::{alternate, machine, median_pairs, scale, spawn, wait, PairRun, ScaleRun, PAIRS};

const SIZES: [(u32, u32); 3] = [(320, 240), (1920, 1080), (7680, 4320)];
const TRANSPORTS: [Transport; 2] = [Transport::Ours, Transport::UnixFd];

#[derive(Debug, Serialize)]
struct Results {
    machine: String,
    gstreamer: String,
    /// How often each pair and scale comparison ran ([`alternate`]).
    rounds: usize,
    elements: Vec<PairRun>,
    scale: Vec<(Transport, ScaleRun)>,
    fan_out: Vec<FanOutRun>,
}

pub fn run(dir: &Path, run_for: Duration, rounds: usize) {
    gst::init().unwrap();
    let gstreamer = gst::version_string().to_string();
    let mut results = Results {
        machine: machine(),
        gstreamer: gstreamer.clone(),
        rounds,
        elements: vec![],
        scale: vec![],
        fan_out: vec![],
    };
    println!("machine: {}; {gstreamer}", results.machine);
    assert!(
        gst::ElementFactory::find("unixfdsink").is_some(),
        "no unixfdsink in {gstreamer}: this part runs on GStreamer >= 1.24 (scripts/newest-gst)"
    );

    println!("\n== {gstreamer}: one pair, qtisocketsink → qtisocketsrc and unixfdsink → unixfdsrc ==");
    for (width, height) in SIZES {
        for run in median_pairs(&dir.join("newest"), &TRANSPORTS, (width, height), run_for, rounds) {
            println!("{}", run.line());
            results.elements.push(run);
        }
    }

    println!("\n== {gstreamer}: pairs at once, 1920x1080 ==");
    for pairs in PAIRS {
        let medians = alternate(
            rounds,
            TRANSPORTS.len(),
            |round, member| {
                // Sockets of their own each round: unixfdsink does not take over a stale one.
                let dir = dir.join(format!("round-{round}"));
                std::fs::create_dir_all(&dir).unwrap();
                scale(&dir, TRANSPORTS[member], pairs, run_for)
            },
            |s| s.per_second,
        );
        for (transport, s) in TRANSPORTS.into_iter().zip(medians) {
            println!(
                "{:<6} {:>2} pairs: {:>9.0} buffers/s aggregate, p50 {:>7.1} µs, p99 {:>7.1} µs, {:.1} µs CPU per buffer (both sides)",
                transport.name(),
                pairs,
                s.per_second,
                s.p50_us,
                s.p99_us,
                s.cpu_us_per_buffer
            );
            results.scale.push((transport, s));
        }
    }

    println!("\n== {gstreamer}: fan-out, one producer, N receivers, 1920x1080: ours (socket-dir) and unixfdsink ==");
    for receivers in fanout::RECEIVERS {
        let ours = fanout::run(dir, Kind::SocketDir, receivers, false, run_for);
        let unixfd = fan_out(dir, receivers, false, run_for);
        for run in [ours, unixfd] {
            println!("{}", run.line());
            results.fan_out.push(run);
        }
    }
    // A stuck client: unixfdsink keeps every frame until each client released it.
    let stuck = fan_out(dir, 2, true, run_for);
    println!("{} (the stuck client killed 1 s after the run)", stuck.line());
    results.fan_out.push(stuck);

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("newest-gst.json"), serde_json::to_string_pretty(&results).unwrap()).unwrap();
    std::fs::write(out.join("newest-gst.md"), results.markdown()).unwrap();
    println!("\nwrote {0}/newest-gst.json and {0}/newest-gst.md", out.display());
}

/// One unixfdsink (1920x1080 frames for `run_for`) and `clients` unixfdsrc processes,
/// and with `with_stuck` one more that never releases a frame: it is killed 1 s after
/// the run should have ended (else the producer would wait for it for ever).
fn fan_out(dir: &Path, clients: usize, with_stuck: bool, run_for: Duration) -> FanOutRun {
    let socket = dir.join(format!("fan-out-{clients}-{with_stuck}"));
    let socket = socket.to_str().unwrap();
    // The clients wait for the socket, the sender for its first client.
    let receivers: Vec<_> = (0..clients).map(|_| spawn("elem-recv", &[socket, "unixfd"])).collect();
    let stuck = with_stuck.then(|| spawn("fan-stuck", &[socket, "unixfd"]));
    let ms = run_for.as_millis().to_string();
    let sender = spawn("elem-send", &[socket, "unixfd", "1920", "1080", &ms, "0"]);
    if let Some(mut stuck) = stuck {
        std::thread::sleep(run_for + Duration::from_secs(1));
        let _ = stuck.kill();
        let _ = stuck.wait();
    }
    let send: SendReport = serde_json::from_str(&wait(sender)).unwrap();
    let recv: Vec<RecvReport> = receivers.into_iter().map(|r| serde_json::from_str(&wait(r)).unwrap()).collect();
    FanOutRun::from_reports(Kind::UnixFd, with_stuck, run_for, &send, &recv)
}

fn name(transport: Transport) -> &'static str {
    match transport {
        Transport::Ours => "qtisocketsink → qtisocketsrc",
        Transport::UnixFd => "unixfdsink → unixfdsrc",
        Transport::Shm => "shmsink → shmsrc",
        Transport::ShmCopy => "shmsink → shmsrc, copied",
    }
}

impl Results {
    fn markdown(&self) -> String {
        let v = self.gstreamer.trim_start_matches("GStreamer ");
        let mut md = format!(
            "\n### On GStreamer {v}: one pair, ours beside unixfdsink → unixfdsrc\n\n\
             The same benchmark binary, run again in the Debian 13 root of scripts/newest-gst ({}; {}). \
             unixfdsink → unixfdsrc (gst-plugins-bad ≥ 1.24, not in Debian 12's 1.22) is measured as ours is: \
             NV12 frames written into the pool or allocator the sink proposes (memfds for both, no copy), \
             at most {} out (the producer's pool), \
             each row the median of {} runs (ours and unixfd alternating), \
             latency from a CLOCK_MONOTONIC stamp in each frame, read at the receiver's sink.\n\n",
            self.gstreamer, self.machine, PAIR_PRODUCER_BUFFERS, self.rounds
        );
        md += "\
               | frame | transport | buffers/s | × ours | p50 latency (µs) | p99 (µs) | CPU/buffer sender (µs) | CPU/buffer receiver (µs) |\n\
               |---|---|---|---|---|---|---|---|\n";
        for r in &self.elements {
            let ours = self
                .elements
                .iter()
                .find(|o| o.transport == Transport::Ours && o.width == r.width)
                .map_or(f64::NAN, |o| o.per_second());
            md += &format!(
                "| {}x{} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                r.width,
                r.height,
                name(r.transport),
                r.per_second(),
                r.per_second() / ours,
                r.recv.p50_us,
                r.recv.p99_us,
                r.send.cpu_s * 1e6 / r.send.buffers.max(1) as f64,
                r.recv.cpu_s * 1e6 / r.recv.buffers.max(1) as f64
            );
        }
        md += &format!("\n### On GStreamer {v}: pairs at once (1920x1080, each pair its own socket)\n\n");
        md += "\
               | pairs | transport | buffers/s aggregate | × 1 pair | × ours | mean p50 (µs) | worst p99 (µs) | CPU per buffer, both sides (µs) |\n\
               |---|---|---|---|---|---|---|---|\n";
        for (transport, s) in &self.scale {
            let of = |t: Transport, pairs: usize| {
                self.scale
                    .iter()
                    .find(|(tt, ss)| *tt == t && ss.pairs == pairs)
                    .map_or(f64::NAN, |(_, ss)| ss.per_second)
            };
            md += &format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |\n",
                s.pairs,
                name(*transport),
                s.per_second,
                s.per_second / of(*transport, 1),
                s.per_second / of(Transport::Ours, s.pairs),
                s.p50_us,
                s.p99_us,
                s.cpu_us_per_buffer
            );
        }
        md += &fanout::markdown(&self.fan_out).replacen("### Fan-out", &format!("### On GStreamer {v}: fan-out"), 1);
        md += &self.targets();
        md
    }

    /// Issue #15's targets against unixfdsink → unixfdsrc: ≥ 1.3× its buffers/s with p99
    /// ≤ 0.5× its p99, one pair at each size and 1, 4 and 16 pairs at 1920x1080.
    fn targets(&self) -> String {
        let v = self.gstreamer.trim_start_matches("GStreamer ");
        let mut md = format!(
            "\n### Targets on GStreamer {v} (issue #15): ≥ 1.3× unixfd's buffers/s, p99 ≤ 0.5× its p99\n\n\
             | comparison | buffers/s × unixfd | p99 × unixfd | met |\n|---|---|---|---|\n"
        );
        let mut row = |what: String, speed: f64, p99: f64| {
            let met = speed >= 1.3 && p99 <= 0.5;
            md += &format!("| {what} | {speed:.3}× | {p99:.3}× | {} |\n", if met { "yes" } else { "**no**" });
        };
        for (width, height) in SIZES {
            let find = |t: Transport| self.elements.iter().find(|r| r.transport == t && r.width == width);
            if let (Some(ours), Some(unixfd)) = (find(Transport::Ours), find(Transport::UnixFd)) {
                row(
                    format!("one pair, {width}x{height}"),
                    ours.per_second() / unixfd.per_second(),
                    ours.recv.p99_us / unixfd.recv.p99_us,
                );
            }
        }
        for pairs in PAIRS {
            let find = |t: Transport| self.scale.iter().find(|(tt, s)| *tt == t && s.pairs == pairs).map(|(_, s)| s);
            if let (Some(ours), Some(unixfd)) = (find(Transport::Ours), find(Transport::UnixFd)) {
                row(
                    format!("{pairs} pairs, 1920x1080"),
                    ours.per_second / unixfd.per_second,
                    ours.p99_us / unixfd.p99_us,
                );
            }
        }
        md
    }
}
