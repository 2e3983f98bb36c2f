//! The directory a fan-out follows: the UNIX sockets in it, seen again on every change
//! inotify reports. A receiver joins by creating its socket there and leaves by removing
//! it; anything else in the directory is ignored.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, WatchFlags};

use crate::transport::MAX_SOCKET_PATH_LEN;

pub(super) struct Directory {
    pub path: PathBuf,
    /// Readable when something in the directory, or the directory itself, changed.
    inotify: OwnedFd,
    /// Entries already reported as ignored, so that each is said once.
    ignored: BTreeSet<PathBuf>,
}

/// What one look at the directory found.
pub(super) struct Scan {
    pub sockets: BTreeSet<PathBuf>,
    /// Entries seen for the first time that are not sockets a receiver could listen on,
    /// with why.
    pub newly_ignored: Vec<(PathBuf, &'static str)>,
}

impl Directory {
    /// Starts watching `path`; fails, naming it, when it is not a directory we can read.
    pub fn watch(path: &Path) -> io::Result<Directory> {
        let inotify = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        let events = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::ATTRIB
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        inotify::add_watch(&inotify, path, events).map_err(|e| named(path, e.into()))?;
        Ok(Directory { path: path.to_owned(), inotify, ignored: BTreeSet::new() })
    }

    /// Reads the pending change notices. `Err` when the directory itself was removed or
    /// moved: it is no longer the one we were given.
    pub fn take_changes(&self) -> io::Result<()> {
        let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buf);
        let mut gone = false;
        while let Ok(event) = reader.next() {
            gone |= event.events().intersects(
                inotify::ReadFlags::DELETE_SELF | inotify::ReadFlags::MOVE_SELF | inotify::ReadFlags::IGNORED,
            );
        }
        if gone {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the directory was removed or moved away"));
        }
        Ok(())
    }

    /// The sockets in the directory now. `Err` when it cannot be read (removed, or its
    /// permissions changed).
    pub fn scan(&mut self) -> io::Result<Scan> {
        let mut sockets = BTreeSet::new();
        let mut newly_ignored = Vec::new();
        let mut seen = BTreeSet::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            let path = entry.path();
            // Not followed: a symlink is ignored, whatever it points to.
            let Ok(kind) = entry.file_type() else { continue };
            let why = if kind.is_socket() {
                if path.as_os_str().len() <= MAX_SOCKET_PATH_LEN {
                    sockets.insert(path);
                    continue;
                }
                "its path is too long for a UNIX socket address"
            } else if kind.is_symlink() {
                "a symlink, not a socket (symlinks are not followed)"
            } else if kind.is_dir() {
                "a directory, not a socket"
            } else if kind.is_file() {
                "a regular file, not a socket"
            } else {
                "not a socket"
            };
            if !self.ignored.contains(&path) {
                newly_ignored.push((path.clone(), why));
            }
            seen.insert(path);
        }
        self.ignored = seen;
        Ok(Scan { sockets, newly_ignored })
    }
}

impl AsFd for Directory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
