//! The demo: two processes. This one receives (`qtisocketsrc ! fakesink`); the child it
//! starts sends (`videotestsrc ! qtisocketsink`). At the end it prints the frames
//! received, the bytes described (passed as fds) against the bytes copied, the latency
//! from the sender's sink to the receiver's, and where a PNG snapshot of a received
//! frame is.
//!
//! Latency: the sender writes CLOCK_MONOTONIC (system-wide) into the first 8 bytes of
//! each frame just before `qtisocketsink` renders it; the receiver reads them when the
//! frame reaches its sink. The snapshot shows those 8 bytes as a speck at the top left.
//!
//! Usage: qsock-demo [--frames N] [--out DIR]        (the child: qsock-demo --send SOCKET N)

#[path = "demo_common/options.rs"]
mod options;
#[path = "demo_common/pipeline.rs"]
mod pipeline;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use pipeline::{init, launch, wait_for_eos};

const CAPS: &str = "video/x-raw,format=NV12,width=1280,height=720,framerate=30/1";

/// CLOCK_MONOTONIC (the system clock's default type): the same clock in both processes.
fn now_ns() -> u64 {
    gst::SystemClock::obtain().time().nseconds()
}

/// Runs `pipeline` to EOS; an error message is returned as text.
fn run_to_eos(pipeline: &gst::Pipeline, limit: Duration) -> Result<(), String> {
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot play: {e}"))?;
    let result = wait_for_eos(pipeline, limit);
    pipeline.set_state(gst::State::Null).map_err(|e| format!("cannot stop: {e}"))?;
    result
}

/// The sender process: `videotestsrc ! qtisocketsink`, each frame stamped; prints its
/// sink's stats on one line at the end.
fn send(socket: &str, frames: u32) -> Result<(), String> {
    init()?;
    let pipeline = launch(&format!(
        "videotestsrc is-live=true pattern=smpte75 num-buffers={frames} ! {CAPS} ! \
         qtisocketsink name=sink socket={socket} wait-for-receiver=true sync=false"
    ))?;
    let sink = pipeline.by_name("sink").expect("named in the description");
    sink.static_pad("sink").expect("a sink pad").add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(buffer) = info.buffer_mut() {
            if let Ok(mut map) = buffer.make_mut().map_writable() {
                map[..8].copy_from_slice(&now_ns().to_le_bytes());
            }
        }
        gst::PadProbeReturn::Ok
    });
    run_to_eos(&pipeline, Duration::from_secs(60))?;
    let stats = sink.property::<gst::Structure>("stats");
    println!("{stats}");
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index] as f64 / 1e6
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The receiving side, and the sender as a child process.
fn demo(frames: u32, out: PathBuf) -> Result<(), String> {
    init()?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let socket = out.join("demo.sock");
    let snapshot = out.join("snapshot.png");
    let _ = std::fs::remove_file(&snapshot);
    let pipeline = launch(&format!(
        "qtisocketsrc name=src socket={} ! video/x-raw,format=NV12 ! fakesink name=sink sync=false",
        socket.display()
    ))?;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(frames as usize)));
    let kept: Arc<Mutex<Option<gst::Sample>>> = Arc::default();
    let pad = pipeline.by_name("sink").expect("named").static_pad("sink").expect("a sink pad");
    pad.add_probe(gst::PadProbeType::BUFFER, {
        let (latencies, kept) = (latencies.clone(), kept.clone());
        move |pad, info| {
            let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
            let Ok(map) = buffer.map_readable() else { return gst::PadProbeReturn::Ok };
            let stamp = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
            drop(map);
            let mut latencies = latencies.lock().unwrap();
            latencies.push(now_ns().saturating_sub(stamp));
            if latencies.len() == (frames as usize / 2).max(1) {
                // A copy: the received memory goes back to the sender.
                let sample = gst::Sample::builder()
                    .buffer(&buffer.copy_deep().expect("a copy"))
                    .caps_if_some(pad.current_caps().as_ref())
                    .build();
                *kept.lock().unwrap() = Some(sample);
            }
            gst::PadProbeReturn::Ok
        }
    });
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot start the receiver: {e}"))?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let sender = Command::new(exe)
        .args(["--send", socket.to_str().ok_or("a UTF-8 path")?, &frames.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the sender: {e}"))?;
    println!("sender   (pid {}): videotestsrc ! {CAPS} ! qtisocketsink socket={}", sender.id(), socket.display());
    println!("receiver (pid {}): qtisocketsrc socket={} ! fakesink", std::process::id(), socket.display());
    let received = run_to_eos(&pipeline, Duration::from_secs(50));
    let src_stats = pipeline.by_name("src").expect("named").property::<gst::Structure>("stats");
    let output = sender.wait_with_output().map_err(|e| e.to_string())?;
    received?;
    if !output.status.success() {
        return Err(format!("the sender failed: {}", output.status));
    }
    let sender_stats = String::from_utf8_lossy(&output.stdout);
    let sender_stats: gst::Structure =
        sender_stats.trim().parse().map_err(|_| format!("unreadable sender stats: {sender_stats}"))?;

    let get = |s: &gst::Structure, f: &str| s.get::<u64>(f).unwrap_or(0);
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    println!("frames received:  {} of {frames}", get(&src_stats, "buffers"));
    println!(
        "bytes described:  {} (passed as {} fds; the memory itself never crossed the socket)",
        megabytes(get(&src_stats, "bytes-described")),
        get(&src_stats, "fds-received")
    );
    println!(
        "bytes copied:     {} ({} copies by the sender)",
        megabytes(get(&sender_stats, "bytes-copied")),
        get(&sender_stats, "copies")
    );
    println!(
        "latency (sender's sink to receiver's sink): p50 {:.3} ms, p99 {:.3} ms over {} frames",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.len()
    );
    let sample = kept.lock().unwrap().take().ok_or("no frame was received")?;
    let png = gst_video::convert_sample(
        &sample,
        &gst::Caps::builder("image/png").build(),
        Some(gst::ClockTime::from_seconds(10)),
    )
    .map_err(|e| format!("PNG conversion: {e}"))?;
    let bytes = png.buffer().ok_or("empty PNG")?.map_readable().map_err(|e| e.to_string())?.to_vec();
    std::fs::write(&snapshot, bytes).map_err(|e| format!("{}: {e}", snapshot.display()))?;
    println!("snapshot:         {}", snapshot.display());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, socket, frames] if flag == "--send" => {
            frames.parse().map_err(|_| "frames: a number".to_string()).and_then(|n| send(socket, n))
        }
        _ => {
            let (frames, out) = options::parse("qsock-demo", &args, 300);
            demo(frames, out)
        }
    };
    options::exit_on_error("qsock-demo", result);
}
