//! The demo (`scripts/demo`): two processes, `videotestsrc ! qtisocketsink` and
//! `qtisocketsrc`, end by themselves and report what the README promises.

mod common;

use std::process::Command;

use common::TempDir;

#[test]
fn demo_reports_frames_bytes_latency_and_writes_a_png_snapshot() {
    let dir = TempDir::new("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_qsock-demo"))
        .args(["--frames", "30", "--out", dir.0.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("frames received:  30 of 30"), "{text}");
    // 30 frames of 1280x720 NV12, none copied.
    assert!(text.contains("bytes described:  41.5 MB"), "{text}");
    assert!(text.contains("bytes copied:     0.0 MB (0 copies by the sender)"), "{text}");
    assert!(text.contains("latency (sender's sink to receiver's sink): p50 "), "{text}");
    let png = std::fs::read(dir.path("snapshot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(text.contains(&format!("snapshot:         {}", dir.path("snapshot.png").display())), "{text}");
}

#[test]
fn fanout_demo_the_stuck_receiver_gets_max_in_flight_and_the_others_every_frame() {
    let dir = TempDir::new("demo-fanout");
    let out = Command::new(env!("CARGO_BIN_EXE_qsock-fanout-demo"))
        .args(["--frames", "60", "--out", dir.0.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("producer: 60 frames rendered in "), "{text}");
    let row = |name: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{text}"));
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    // buffers-sent, skipped, in-flight, returns, frames it received.
    assert_eq!(row("detector"), ["60", "0", "0", "60", "60"], "{text}");
    assert_eq!(row("recorder"), ["60", "0", "0", "60", "60"], "{text}");
    assert_eq!(row("stuck")[..4], ["4", "56", "4", "0"], "{text}");
}
