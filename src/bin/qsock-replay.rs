//! qsock-replay: plays a capture of the deployed `qtisocketsink` (tests/data/*.jsonl)
//! into a receiver, byte for byte, with real memfds in place of the original fds.
//!
//!     qsock-replay SOCKET CAPTURE.jsonl [--repeat N] [--hangup-after N] [--connect-timeout-ms N] [--quiet]
//!
//! Like a real sender it connects with retries every 10 ms, holds every buffer it sent
//! until its return arrives, and never sends a pooled `buf_id` again before that
//! `buf_id` came back. Each memfd starts with the capture's `first8` (the buffer's
//! index, little-endian u64) so a receiver can check it maps the right memory.
//! `--repeat N` plays the data messages N times before the EOS; `--hangup-after N`
//! closes the socket after N messages, without EOS, as a crashing sender would;
//! `--connect-timeout-ms N` gives up connecting after N ms (default 10000).
//! Records that do not parse (crafted lies, tests/data/crafted) are sent as they are.
//! Exits 0 when every buffer sent was returned (or with --hangup-after), 1 otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gstqtisocket::protocol::{ReceiverMessage, SenderMessage, MAX_RECORD_LEN};
use gstqtisocket::transport::{wait_readable, Connection, MessageIn, MessageReader};

const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
const RETURN_TIMEOUT: Duration = Duration::from_secs(10);

struct CapturedMessage {
    record: Vec<u8>,
    fd_sizes: Vec<u64>,
    first8: Vec<u8>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn load(path: &Path) -> Result<Vec<CapturedMessage>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(record) = v["record"].as_str() else { continue };
        let fd_sizes = v["fd_sizes"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(|s| s.as_u64()).collect());
        let first8 = v["first8"].as_str().map_or(Vec::new(), hex);
        messages.push(CapturedMessage { record: hex(record), fd_sizes, first8 });
    }
    Ok(messages)
}

fn memfd(size: u64, first8: &[u8]) -> std::io::Result<OwnedFd> {
    let memfd =
        memfd::MemfdOptions::default().close_on_exec(true).create("qsock-replay").map_err(std::io::Error::other)?;
    let mut file = memfd.into_file();
    file.set_len(size)?;
    file.write_all(&first8[..first8.len().min(size as usize)])?;
    Ok(file.into())
}

fn connect(path: &Path, timeout: Duration) -> Result<Connection, String> {
    let start = Instant::now();
    loop {
        match Connection::connect(path) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > timeout => return Err(format!("connecting to {}: {e}", path.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

struct Replayer {
    connection: Connection,
    reader: MessageReader,
    buf: Vec<u8>,
    /// buf_id -> how many of its buffers are out with the receiver.
    outstanding: HashMap<i32, usize>,
    sent: usize,
    fds_sent: usize,
    returns: usize,
    disconnected: bool,
}

impl Replayer {
    /// Reads one message from the receiver, waiting up to `timeout`. False on timeout or hang-up.
    fn read_one(&mut self, timeout: Duration) -> Result<bool, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.reader.read(&self.connection, &mut self.buf).map_err(|e| e.to_string())? {
                MessageIn::Message { len, fds } => {
                    match ReceiverMessage::parse(&self.buf[..len], fds.len()).map_err(|e| e.to_string())? {
                        ReceiverMessage::Return(r) => {
                            self.returns += 1;
                            for id in r.buf_ids() {
                                match self.outstanding.get_mut(id) {
                                    Some(n) if *n > 0 => *n -= 1,
                                    _ => return Err(format!("the receiver returned buf_id {id}, which is not out")),
                                }
                            }
                        }
                        ReceiverMessage::Disconnect => self.disconnected = true,
                    }
                    return Ok(true);
                }
                MessageIn::Hangup => return Ok(false),
                MessageIn::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || !wait_readable(self.connection.as_fd(), Some(left)).map_err(|e| e.to_string())?
                    {
                        return Ok(false);
                    }
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.outstanding.values().sum()
    }

    fn send(&mut self, message: &CapturedMessage) -> Result<(), String> {
        // A crafted lie may not parse; it is sent all the same, just not tracked.
        if let Ok(SenderMessage::Data(data)) = SenderMessage::parse(&message.record, message.fd_sizes.len()) {
            let fd_backed = !data.buf_ids().contains(&-1);
            // A pooled buf_id is one buffer: it cannot go out again before it came back.
            while fd_backed && data.buf_ids().iter().any(|id| self.outstanding.get(id).is_some_and(|&n| n > 0)) {
                if !self.read_one(RETURN_TIMEOUT)? {
                    return Err(format!("no return of buf_ids {:?} within {RETURN_TIMEOUT:?}", data.buf_ids()));
                }
            }
            if fd_backed {
                for id in data.buf_ids() {
                    *self.outstanding.entry(*id).or_default() += 1;
                }
            }
        }
        let fds = message
            .fd_sizes
            .iter()
            .map(|&size| memfd(size, &message.first8))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("creating a memfd: {e}"))?;
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        self.connection.send_message(&message.record, &borrowed).map_err(|e| format!("sending: {e}"))?;
        self.sent += 1;
        self.fds_sent += fds.len();
        Ok(())
    }
}

fn run(args: &[String]) -> Result<bool, String> {
    let usage =
        "usage: qsock-replay SOCKET CAPTURE.jsonl [--repeat N] [--hangup-after N] [--connect-timeout-ms N] [--quiet]";
    let [socket, capture, options @ ..] = args else { return Err(usage.into()) };
    let (mut repeat, mut hangup_after, mut quiet) = (1usize, None, false);
    let mut connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut number = || options.next().and_then(|n| n.parse().ok()).ok_or(usage);
        match option.as_str() {
            "--repeat" => repeat = number()?,
            "--hangup-after" => hangup_after = Some(number()?),
            "--connect-timeout-ms" => connect_timeout_ms = number()? as u64,
            "--quiet" => quiet = true,
            _ => return Err(usage.into()),
        }
    }
    let messages = load(Path::new(capture))?;
    let (eos, data): (Vec<_>, Vec<_>) = messages.iter().partition(|m| m.record == [0, 0, 0, 0]);
    let mut replayer = Replayer {
        connection: connect(Path::new(socket), Duration::from_millis(connect_timeout_ms))?,
        reader: MessageReader::default(),
        buf: vec![0; MAX_RECORD_LEN + 1],
        outstanding: HashMap::new(),
        sent: 0,
        fds_sent: 0,
        returns: 0,
        disconnected: false,
    };
    let plan = std::iter::repeat_n(&data, repeat).flatten().chain(&eos);
    for (i, message) in plan.enumerate() {
        if hangup_after == Some(i) || replayer.disconnected {
            break;
        }
        replayer.send(message)?;
        // Keep the receiver's queue short and the returns flowing, as a real pool would.
        while replayer.in_flight() > 16 {
            replayer.read_one(RETURN_TIMEOUT)?;
        }
    }
    if hangup_after.is_none() {
        while replayer.in_flight() > 0 && replayer.read_one(RETURN_TIMEOUT)? {}
    }
    let missing = replayer.in_flight();
    if !quiet || missing > 0 {
        println!(
            "qsock-replay: sent {} messages with {} fds; {} returns received, {} buffers not returned{}",
            replayer.sent,
            replayer.fds_sent,
            replayer.returns,
            missing,
            if replayer.disconnected { "; the receiver sent DISCONNECT" } else { "" }
        );
    }
    Ok(missing == 0 || hangup_after.is_some())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("qsock-replay: {e}");
            ExitCode::from(2)
        }
    }
}
