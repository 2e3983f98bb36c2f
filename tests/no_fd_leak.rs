//! Alone in its binary: it counts this process's fds, so no other test may run beside it.

mod common;

use std::time::Duration;

use common::*;
use gstqtisocket::{Event, Receiver};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

#[test]
fn ten_thousand_messages_leave_no_fd_behind() {
    let dir = TempDir::new("soak");
    let before = open_fds();
    let mut receiver = Receiver::bind(dir.path("s")).unwrap();
    for (capture, repeat, per_round) in [("video-pool.jsonl", 1250, 8), ("video-nopool.jsonl", 2000, 5)] {
        let child = spawn_replay(&dir.path("s"), capture, &["--repeat", &repeat.to_string(), "--quiet"]);
        let mut buffers = 0;
        while let Event::Buffer(_) = recv_after_connect(&mut receiver, WAIT).unwrap() {
            buffers += 1;
        }
        assert_eq!(buffers, repeat * per_round, "{capture}");
        assert!(finish_replay(child).0, "{capture}: returns missing");
        assert!(matches!(recv_after_connect(&mut receiver, WAIT).unwrap(), Event::SenderGone));
    }
    let stats = receiver.stats();
    assert_eq!((stats.buffers, stats.returns_sent, stats.protocol_errors), (20_000, 20_000, 0));
    drop(receiver);
    assert_eq!(open_fds(), before, "fds leaked");
    assert!(!dir.path("s").exists(), "socket file left behind");
}
