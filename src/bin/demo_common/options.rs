//! The demos' command line, `[--frames N] [--out DIR]`, and how they end.

use std::path::PathBuf;

/// Parses `args` (after the program name): the frames to send (`default_frames` unless
/// given) and where to write (target/demo unless given). Anything else prints the usage
/// of `program` and exits with status 2.
pub fn parse(program: &str, args: &[String], default_frames: u32) -> (u32, PathBuf) {
    let mut frames = default_frames;
    let mut out = PathBuf::from("target/demo");
    for pair in args.chunks(2) {
        match pair {
            [flag, n] if flag == "--frames" => frames = n.parse().unwrap_or(frames),
            [flag, dir] if flag == "--out" => out = PathBuf::from(dir),
            _ => {
                eprintln!("usage: {program} [--frames N] [--out DIR]");
                std::process::exit(2);
            }
        }
    }
    (frames, out)
}

/// Exits with status 1 after printing the error, if there is one.
pub fn exit_on_error(program: &str, result: Result<(), String>) {
    if let Err(e) = result {
        eprintln!("{program}: {e}");
        std::process::exit(1);
    }
}
