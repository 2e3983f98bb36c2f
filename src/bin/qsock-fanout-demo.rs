//! The fan-out demo (`scripts/demo-fanout`): one camera, three consumers, one of them
//! stuck. This process sends (`videotestsrc is-live=true ! qtisocketsink socket-dir=DIR`);
//! three child processes receive, each on its own socket in DIR: `detector` and
//! `recorder` (`qtisocketsrc ! fakesink`) and `stuck` (`qtisocketsrc ! identity` that
//! sleeps on its first buffer for an hour: it never returns anything). At the end it
//! prints how fast the producer went, and each receiver's figures as the sink counted
//! them and as the receiver did.
//!
//! Usage: qsock-fanout-demo [--frames N] [--out DIR]
//! (the children: qsock-fanout-demo --receive SOCKET [--stuck])

#[path = "demo_common/options.rs"]
mod options;
#[path = "demo_common/pipeline.rs"]
mod pipeline;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;
use pipeline::{init, launch, wait_for_eos};

const CAPS: &str = "video/x-raw,format=NV12,width=1280,height=720,framerate=30/1";
const RECEIVERS: [&str; 3] = ["detector", "recorder", "stuck"];

/// A receiver child: plays until EOS, then prints how many buffers reached its sink.
fn receive(socket: &str, stuck: bool) -> Result<(), String> {
    init()?;
    let hold = if stuck { "identity sleep-time=3600000000 ! " } else { "" };
    let pipeline = launch(&format!("qtisocketsrc name=src socket={socket} ! {hold}fakesink name=sink sync=false"))?;
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot start: {e}"))?;
    let result = wait_for_eos(&pipeline, Duration::from_secs(120));
    let stats = pipeline.by_name("src").expect("named").property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).map_err(|e| format!("cannot stop: {e}"))?;
    result?;
    println!("{}", stats.get::<u64>("buffers").unwrap_or(0));
    Ok(())
}

fn spawn_receiver(exe: &Path, socket: &Path, stuck: bool) -> Result<Child, String> {
    let mut command = Command::new(exe);
    command.arg("--receive").arg(socket).stdout(Stdio::piped());
    if stuck {
        command.arg("--stuck");
    }
    command.spawn().map_err(|e| format!("starting a receiver: {e}"))
}

fn demo(frames: u32, out: PathBuf) -> Result<(), String> {
    init()?;
    let dir = out.join("cams");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pipeline = launch(&format!(
        "videotestsrc is-live=true num-buffers={frames} ! {CAPS} ! qtisocketsink name=sink socket-dir={}",
        dir.display()
    ))?;
    let sink = pipeline.by_name("sink").expect("named in the description");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for name in RECEIVERS {
        let socket = dir.join(format!("{name}.sock"));
        let child = spawn_receiver(&exe, &socket, name == "stuck")?;
        println!("receiver {name:<9} (pid {:>6}): qtisocketsrc socket={}", child.id(), socket.display());
        children.push((name, child));
    }
    println!(
        "sender             (pid {:>6}): videotestsrc is-live=true ! {CAPS} ! qtisocketsink socket-dir={}",
        std::process::id(),
        dir.display()
    );
    // The receivers are listening before the first frame: every one sees the stream whole.
    let deadline = Instant::now() + Duration::from_secs(10);
    while RECEIVERS.iter().any(|name| !dir.join(format!("{name}.sock")).exists()) {
        if Instant::now() > deadline {
            return Err("the receivers did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The producer's pace: from the first frame the sink renders to the last (EOS then
    // waits up to 2 s for the stuck receiver's returns, which is not the producer's).
    let rendered: Arc<Mutex<Vec<Instant>>> = Arc::default();
    sink.static_pad("sink").expect("a sink pad").add_probe(gst::PadProbeType::BUFFER, {
        let rendered = rendered.clone();
        move |_, _| {
            rendered.lock().unwrap().push(Instant::now());
            gst::PadProbeReturn::Ok
        }
    });
    pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot start the sender: {e}"))?;
    // Each receiver's figures: from its leave message, or, still connected at the end,
    // from `stats` just before the sink stops.
    let mut figures: HashMap<String, gst::Structure> = HashMap::new();
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let ended = loop {
        let Some(message) = bus.timed_pop(gst::ClockTime::from_seconds(60)) else {
            break Err("no EOS within 60 s".to_owned());
        };
        match message.view() {
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure().filter(|s| s.name() == "qtisocketsink-receiver-left") {
                    figures.insert(s.get::<String>("socket").unwrap_or_default(), s.to_owned());
                }
            }
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(format!("the sender failed: {} ({:?})", e.error(), e.debug())),
            _ => {}
        }
    };
    let stats = sink.property::<gst::Structure>("stats");
    for s in stats.get::<gst::Array>("receiver-stats").map_err(|e| e.to_string())?.iter() {
        if let Ok(s) = s.get::<gst::Structure>() {
            figures.insert(s.get::<String>("socket").unwrap_or_default(), s);
        }
    }
    pipeline.set_state(gst::State::Null).map_err(|e| format!("cannot stop: {e}"))?;
    ended?;
    let rendered = rendered.lock().unwrap().clone();
    let elapsed = match (rendered.first(), rendered.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => return Err("the sink rendered nothing".into()),
    };

    let mut received = Vec::new();
    for (name, mut child) in children {
        if name == "stuck" {
            // It never ends on its own: its only buffer sleeps for an hour.
            let _ = child.kill();
            let _ = child.wait();
            received.push((name, "(stuck, killed)".to_owned()));
            continue;
        }
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        received.push((name, String::from_utf8_lossy(&output.stdout).trim().to_owned()));
    }
    // n frames span n - 1 frame intervals.
    let fps = (rendered.len() - 1) as f64 / elapsed.as_secs_f64();
    println!(
        "producer: {} frames rendered in {:.2} s: {fps:.1} frames/s (the camera's rate is 30)",
        rendered.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "{:<10} {:>12} {:>8} {:>10} {:>8} {:>18}",
        "receiver", "buffers-sent", "skipped", "in-flight", "returns", "frames it received"
    );
    for (name, count) in received {
        let socket = dir.join(format!("{name}.sock")).display().to_string();
        let get = |field: &str| figures.get(&socket).and_then(|s| s.get::<u64>(field).ok()).unwrap_or(0);
        println!(
            "{name:<10} {:>12} {:>8} {:>10} {:>8} {count:>18}",
            get("buffers-sent"),
            get("skipped"),
            get("in-flight"),
            get("returns")
        );
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, socket] if flag == "--receive" => receive(socket, false),
        [flag, socket, stuck] if flag == "--receive" && stuck == "--stuck" => receive(socket, true),
        _ => {
            let (frames, out) = options::parse("qsock-fanout-demo", &args, 150);
            demo(frames, out)
        }
    };
    options::exit_on_error("qsock-fanout-demo", result);
}
