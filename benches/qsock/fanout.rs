//! Fan-out at 1920x1080: one producer process, N receiver processes (`qtisocketsrc !
//! fakesink`, elements.rs's receiver, each on its own socket), every receiver getting
//! every frame:
//!  - `socket-dir`: one `qtisocketsink socket-dir=DIR slow-receiver=wait` (the library's
//!    fan-out), frames from the pool it proposes;
//!  - `tee`: `tee` into one `qtisocketsink` per receiver, as one would without fan-out
//!    (tee passes no pool upstream, so every sink copies each frame);
//!  - `unixfdsink` (newest_gst.rs, GStreamer ≥ 1.24): one unixfdsink, N unixfdsrc.
//!
//! And a stuck receiver: `socket-dir` with `slow-receiver=skip`, two healthy receivers
//! with and without a third that never returns a buffer; the producer's rate is compared.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use gst::prelude::*;
use serde::Serialize;

use crate::elements::{send_frames, Frames, RecvReport, SendReport};
use crate::{spawn, wait};

pub const RECEIVERS: [usize; 4] = [1, 2, 4, 8];
/// Frames per second of the stuck-receiver comparison.
const STUCK_COMPARISON_FPS: u32 = 5000;

/// How the producer feeds its receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// `qtisocketsink socket-dir`, back-pressure (`slow-receiver=wait`).
    SocketDir,
    /// `qtisocketsink socket-dir slow-receiver=skip`.
    SocketDirSkip,
    /// `tee` into one `qtisocketsink socket=` per receiver.
    Tee,
    /// One `unixfdsink`, N `unixfdsrc` clients (newest_gst.rs).
    UnixFd,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::SocketDir => "dir",
            Kind::SocketDirSkip => "dir-skip",
            Kind::Tee => "tee",
            Kind::UnixFd => "unixfd",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Kind::SocketDir => "qtisocketsink socket-dir (slow-receiver=wait)",
            Kind::SocketDirSkip => "qtisocketsink socket-dir (slow-receiver=skip)",
            Kind::Tee => "tee ! N × qtisocketsink socket",
            Kind::UnixFd => "unixfdsink → N × unixfdsrc",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FanOutRun {
    pub kind: Kind,
    pub receivers: usize,
    /// A receiver that never returns a buffer ran beside them (not counted in the figures).
    pub with_stuck: bool,
    /// Frames the producer pushed per second.
    pub producer_per_second: f64,
    /// Each healthy receiver's buffers/s (first to last buffer), their mean and sum.
    pub per_receiver_per_second: f64,
    pub aggregate_per_second: f64,
    /// Buffers each healthy receiver got, on average, over the run's length: what a
    /// stall shows in (a stalled receiver's rate between its first and last buffer does not).
    pub per_receiver_over_run: f64,
    /// The receivers' mean p50 and largest p99.
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time of every process (producer and healthy receivers) per buffer delivered.
    pub cpu_us_per_buffer: f64,
    pub sent: u64,
    pub out_of_order: u64,
}

impl FanOutRun {
    /// The figures of a run of `run_for` from what the producer and the healthy
    /// receivers reported.
    pub fn from_reports(
        kind: Kind,
        with_stuck: bool,
        run_for: Duration,
        send: &SendReport,
        recv: &[RecvReport],
    ) -> FanOutRun {
        let receivers = recv.len();
        let delivered: u64 = recv.iter().map(|r| r.buffers).sum();
        let rates: Vec<f64> = recv.iter().map(|r| r.buffers as f64 / r.seconds).collect();
        FanOutRun {
            kind,
            receivers,
            with_stuck,
            producer_per_second: send.buffers as f64 / run_for.as_secs_f64(),
            per_receiver_per_second: rates.iter().sum::<f64>() / receivers as f64,
            per_receiver_over_run: delivered as f64 / receivers as f64 / run_for.as_secs_f64(),
            aggregate_per_second: rates.iter().sum(),
            p50_us: recv.iter().map(|r| r.p50_us).sum::<f64>() / receivers as f64,
            p99_us: recv.iter().map(|r| r.p99_us).fold(0.0, f64::max),
            cpu_us_per_buffer: (send.cpu_s + recv.iter().map(|r| r.cpu_s).sum::<f64>()) * 1e6 / delivered.max(1) as f64,
            sent: send.buffers,
            out_of_order: recv.iter().map(|r| r.out_of_order).sum(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{:<48} {} receivers{}: producer {:>7.0} frames/s, {:>7.0} buffers/s per receiver, {:>8.0} in all, \
             p50 {:>7.1} µs p99 {:>8.1} µs, {:.1} µs CPU per buffer ({} index gaps: frames a receiver missed)",
            self.kind.describe(),
            self.receivers,
            if self.with_stuck { " + 1 stuck" } else { "" },
            self.producer_per_second,
            self.per_receiver_per_second,
            self.aggregate_per_second,
            self.p50_us,
            self.p99_us,
            self.cpu_us_per_buffer,
            self.out_of_order
        )
    }
}

/// One run: `receivers` healthy receiver processes (and a stuck one with `with_stuck`)
/// and the producer, for `run_for`.
pub fn run(dir: &Path, kind: Kind, receivers: usize, with_stuck: bool, run_for: Duration) -> FanOutRun {
    let sockets = dir.join(format!("fan-{}-{receivers}-{with_stuck}", kind.arg()));
    std::fs::create_dir_all(&sockets).unwrap();
    let socket = |i: usize| sockets.join(format!("r{i}.sock")).to_str().unwrap().to_owned();
    let healthy: Vec<Child> = (0..receivers).map(|i| spawn("elem-recv", &[&socket(i), "ours"])).collect();
    let stuck = with_stuck.then(|| spawn("fan-stuck", &[&socket(receivers), "ours"]));
    let all = receivers + usize::from(with_stuck);
    let args =
        [sockets.to_str().unwrap().to_owned(), kind.arg().to_owned(), all.to_string(), run_for.as_millis().to_string()];
    let sender = spawn("fan-send", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let send: SendReport = serde_json::from_str(&wait(sender)).unwrap();
    let recv: Vec<RecvReport> = healthy.into_iter().map(|r| serde_json::from_str(&wait(r)).unwrap()).collect();
    if let Some(mut stuck) = stuck {
        let _ = stuck.kill();
        let _ = stuck.wait();
    }
    let _ = std::fs::remove_dir_all(&sockets);
    FanOutRun::from_reports(kind, with_stuck, run_for, &send, &recv)
}

/// The producer process: `kind` into the sockets of directory `dir`, once all
/// `receivers` are there.
pub fn sender(dir: &Path, kind: &str, receivers: usize, duration: Duration) {
    // The stuck-receiver comparison at a fixed rate the healthy receivers keep up with:
    // with `skip`, an unpaced producer would only measure how fast it can skip.
    let pace = (kind == "dir-skip").then(|| Duration::from_secs(1) / STUCK_COMPARISON_FPS);
    // 16: 8 receivers take 4 each at most, and each `tee` branch has a pool of its own.
    let frames = Frames { width: 1920, height: 1080, duration, count: None, own_pool: false, pace, buffers: 16 };
    let sink = match kind {
        "dir" | "dir-skip" => {
            let slow = if kind == "dir" { "wait" } else { "skip" };
            format!("qtisocketsink name=sink socket-dir={} slow-receiver={slow} sync=false", dir.display())
        }
        "tee" => {
            let branches: String = (0..receivers)
                .map(|i| {
                    format!(
                        " t. ! queue ! qtisocketsink socket={} wait-for-receiver=true sync=false",
                        dir.join(format!("r{i}.sock")).display()
                    )
                })
                .collect();
            format!("tee name=t{branches}")
        }
        other => panic!("unknown fan-out {other}"),
    };
    send_frames(&sink, frames, true, |pipeline| {
        // Every receiver connected before the first frame, so that each sees it all.
        let deadline = Instant::now() + Duration::from_secs(20);
        let connected = || match pipeline.by_name("sink") {
            Some(sink) => sink.property::<gst::Structure>("stats").get::<u32>("receivers").unwrap() as usize,
            None => (0..receivers).filter(|i| dir.join(format!("r{i}.sock")).exists()).count(),
        };
        while connected() < receivers {
            assert!(Instant::now() < deadline, "the receivers did not all connect within 20 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

/// A receiver that takes one buffer and never lets go of it, nor reads on; runs until
/// killed. `transport`: "ours" (qtisocketsrc) or "unixfd" (unixfdsrc).
pub fn stuck_receiver(socket: &Path, transport: &str) {
    gst::init().unwrap();
    gstqtisocket::plugin_register_static().unwrap();
    let src = match transport {
        "ours" => format!("qtisocketsrc socket={}", socket.display()),
        _ => {
            // unixfdsink makes the socket: unixfdsrc fails to start until it is there.
            while !socket.exists() {
                std::thread::sleep(Duration::from_millis(2));
            }
            format!("unixfdsrc socket-path={}", socket.display())
        }
    };
    let pipeline = gst::parse::launch(&format!("{src} ! identity sleep-time=3600000000 ! fakesink")).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

/// The report's tables of `runs`: every receiver getting every frame, then the runs with
/// a stuck receiver beside the same without it.
pub fn markdown(runs: &[FanOutRun]) -> String {
    let has = |kind: Kind| runs.iter().any(|r| r.kind == kind);
    let mut md = String::from(
        "\n### Fan-out (1920x1080, one producer, N receiver processes, each getting every frame)\n\n\
         `socket-dir`: one `qtisocketsink socket-dir` (back-pressure: `slow-receiver=wait`), frames from the pool \
         it proposes. ",
    );
    if has(Kind::Tee) {
        md += "`tee`: `tee` into one `qtisocketsink` per receiver, the way to fan out without it (`tee` passes no \
               pool upstream, so every sink copies every frame). ";
    }
    if has(Kind::UnixFd) {
        md += "`unixfdsink` (GStreamer ≥ 1.24 only): one unixfdsink, N unixfdsrc clients; it keeps a frame until \
               every client has released it. ";
    }
    md += "CPU: every process's, per buffer delivered.\n\n\
           | receivers | fan-out | producer frames/s | buffers/s per receiver | buffers/s, all receivers | × socket-dir | mean p50 (µs) | worst p99 (µs) | CPU per buffer (µs) |\n\
           |---|---|---|---|---|---|---|---|---|\n";
    for r in runs.iter().filter(|r| r.kind != Kind::SocketDirSkip && !r.with_stuck) {
        let ours = runs
            .iter()
            .find(|o| o.kind == Kind::SocketDir && o.receivers == r.receivers)
            .map_or(f64::NAN, |o| o.aggregate_per_second);
        md += &format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} |\n",
            r.receivers,
            r.kind.describe(),
            r.producer_per_second,
            r.per_receiver_per_second,
            r.aggregate_per_second,
            r.aggregate_per_second / ours,
            r.p50_us,
            r.p99_us,
            r.cpu_us_per_buffer
        );
    }
    let stuck: Vec<_> = runs.iter().filter(|r| r.with_stuck).collect();
    if !stuck.is_empty() {
        md += "\n### A stuck receiver (1920x1080, 2 healthy receivers and a third that takes one buffer and never \
               returns anything)\n\n";
        md += if has(Kind::UnixFd) {
            "unixfdsink keeps each frame until every client has released it: the stuck client is killed 1 s after \
             the run should have ended, else the producer would wait for ever.\n\n"
        } else {
            "Ours: `socket-dir` with `slow-receiver=skip` and `max-in-flight` 4: the stuck one gets 4 buffers, then \
             skips. The producer sends 5,000 frames/s, a pace the healthy receivers keep up with (unpaced, with \
             `skip` it would only measure how fast frames can be skipped).\n\n"
        };
        md += "\
               | fan-out | producer frames/s, 2 healthy | with 1 stuck | × | buffers per healthy receiver per second of the run, 2 healthy | with 1 stuck | × |\n\
               |---|---|---|---|---|---|---|\n";
    }
    for with in stuck {
        let alone = runs.iter().find(|r| r.kind == with.kind && r.receivers == with.receivers && !r.with_stuck);
        let Some(alone) = alone else { continue };
        md += &format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |\n",
            with.kind.describe(),
            alone.producer_per_second,
            with.producer_per_second,
            with.producer_per_second / alone.producer_per_second,
            alone.per_receiver_over_run,
            with.per_receiver_over_run,
            with.per_receiver_over_run / alone.per_receiver_over_run
        );
    }
    md
}
