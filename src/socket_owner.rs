//! Whether a receiver is listening on a socket file, asked of the kernel without connecting
//! (a deployed receiver takes any connection for its sender, so a probing connect would
//! disturb it). Part of the transport layer: `io::Error` only, no `unsafe`.
//!
//! The kernel's socket diagnostics (`NETLINK_SOCK_DIAG`, `unix_diag`) list the listening
//! UNIX sockets with the device and inode of the file each is bound to (`UNIX_DIAG_VFS`):
//! the file at the path is matched itself, not its name. Where `unix_diag` is missing
//! (a kernel built without it), `/proc/net/unix` is read instead, matching the path as
//! the listener bound it. Both see only the sockets of this network namespace.
//! docs/robustness.md has the method and its limits.

use std::io;
use std::path::Path;

use rustix::net::{netlink, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// A socket listening on the file at a path.
#[derive(Debug, PartialEq)]
pub(crate) struct Listening {
    /// The socket's inode: `socket:[ino]` in `/proc/PID/fd`.
    socket_ino: u64,
    /// The socket's owner, where the kernel says (`UNIX_DIAG_UID`, Linux 5.3+).
    uid: Option<u32>,
}

impl Listening {
    /// Who listens, for an error message: "pid 1234, gst-launch-1.0", or "pid unknown,
    /// uid 1000" when no process holding the socket is visible to this user.
    pub(crate) fn describe(&self) -> String {
        let holders = processes_holding(self.socket_ino);
        if holders.is_empty() {
            return match self.uid {
                Some(uid) => format!("pid unknown, uid {uid}"),
                None => "pid unknown".into(),
            };
        }
        holders.iter().map(|(pid, comm)| format!("pid {pid}, {comm}")).collect::<Vec<_>>().join("; ")
    }
}

/// The socket listening on the socket file at `path`, whose `lstat` gave `dev` and `ino`;
/// `None` if nobody listens there (a stale file). An error if the kernel cannot be asked.
pub(crate) fn listening_on(path: &Path, dev: u64, ino: u64) -> io::Result<Option<Listening>> {
    match sock_diag_listeners() {
        Ok(listeners) => Ok(listeners.into_iter().find(|l| l.file == Some((dev, ino))).map(|l| l.socket)),
        // No unix_diag in this kernel, or netlink refused to us: the path, as bound.
        Err(diag) => proc_net_unix_listener(path)
            .map_err(|proc| io::Error::other(format!("socket diagnostics: {diag}; /proc/net/unix: {proc}"))),
    }
}

struct DiagListener {
    socket: Listening,
    /// The bound file's (st_dev, st_ino), as `stat` would give them.
    file: Option<(u64, u64)>,
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const TCP_LISTEN: u32 = 10;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_UID: u16 = 7;

/// Every listening UNIX socket of this network namespace that the kernel lists.
fn sock_diag_listeners() -> io::Result<Vec<DiagListener>> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(2)),
    )?;
    // struct nlmsghdr, then struct unix_diag_req: AF_UNIX sockets in state LISTEN.
    let mut request = Vec::with_capacity(40);
    request.extend_from_slice(&40u32.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&[0; 8]); // sequence number, port id
    request.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    request.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes()); // any socket inode
    request.extend_from_slice(&(UDIAG_SHOW_VFS | UDIAG_SHOW_UID).to_ne_bytes());
    request.extend_from_slice(&[0xff; 8]); // no cookie
    rustix::net::sendto(&fd, &request, SendFlags::empty(), &netlink::SocketAddrNetlink::new(0, 0))?;

    let mut listeners = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (len, full_len) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::TRUNC)?;
        if full_len > len {
            return Err(io::Error::other("a socket diagnostics reply did not fit 64 KiB"));
        }
        let mut rest = &buf[..len];
        while rest.len() >= 16 {
            let msg_len = u32_at(rest, 0) as usize;
            let msg_type = u16::from_ne_bytes([rest[4], rest[5]]);
            if msg_len < 16 || msg_len > rest.len() {
                return Err(io::Error::other("a malformed socket diagnostics reply"));
            }
            let payload = &rest[16..msg_len];
            match msg_type {
                NLMSG_DONE => return Ok(listeners),
                NLMSG_ERROR => {
                    let errno = if payload.len() >= 4 { -(u32_at(payload, 0) as i32) } else { libc::EIO };
                    return Err(io::Error::from_raw_os_error(errno));
                }
                SOCK_DIAG_BY_FAMILY if payload.len() >= 16 => listeners.push(parse_unix_diag_msg(payload)),
                _ => {}
            }
            rest = &rest[align4(msg_len).min(rest.len())..];
        }
    }
}

/// struct unix_diag_msg and its attributes.
fn parse_unix_diag_msg(payload: &[u8]) -> DiagListener {
    let mut listener =
        DiagListener { socket: Listening { socket_ino: u32_at(payload, 4).into(), uid: None }, file: None };
    let mut attrs = &payload[16..];
    while attrs.len() >= 4 {
        let attr_len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let attr_type = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if attr_len < 4 || attr_len > attrs.len() {
            break;
        }
        let data = &attrs[4..attr_len];
        match attr_type {
            // struct unix_diag_vfs: the inode (its low 32 bits) and the kernel's dev_t
            // (major << 20 | minor) of the bound file's filesystem.
            UNIX_DIAG_VFS if data.len() >= 8 => {
                let (file_ino, kernel_dev) = (u32_at(data, 0), u32_at(data, 4));
                listener.file = Some((rustix::fs::makedev(kernel_dev >> 20, kernel_dev & 0xf_ffff), file_ino.into()));
            }
            UNIX_DIAG_UID if data.len() >= 4 => listener.socket.uid = Some(u32_at(data, 0)),
            _ => {}
        }
        attrs = &attrs[align4(attr_len).min(attrs.len())..];
    }
    listener
}

/// The same answer from `/proc/net/unix`: a line whose flags have `__SO_ACCEPTCON`
/// (listening) and whose path is `path` (as given, or made absolute).
fn proc_net_unix_listener(path: &Path) -> io::Result<Option<Listening>> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    let absolute = std::path::absolute(path)?;
    Ok(table.lines().skip(1).find_map(|line| {
        // Num RefCount Protocol Flags Type St Inode Path
        let fields: Vec<&str> = line.splitn(8, ' ').collect();
        let [_, _, _, flags, _, _, inode, bound] = fields[..] else { return None };
        let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & 0x1_0000 != 0);
        let same_path = Path::new(bound) == path || Path::new(bound) == absolute;
        (listening && same_path).then(|| Listening { socket_ino: inode.trim().parse().unwrap_or(0), uid: None })
    }))
}

/// The processes (pid, command name) with the socket `socket_ino` among their fds, as far
/// as `/proc` shows them to this user (another user's fds are not readable, unless root).
fn processes_holding(socket_ino: u64) -> Vec<(u32, String)> {
    let link = format!("socket:[{socket_ino}]");
    let Ok(proc) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut holders: Vec<(u32, String)> = proc
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()))
            })
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim_end().to_owned())
        })
        .collect();
    holders.sort();
    holders
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn socket_at(path: &Path, listen: bool) -> std::os::fd::OwnedFd {
        let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        rustix::net::bind(&fd, &rustix::net::SocketAddrUnix::new(path).unwrap()).unwrap();
        if listen {
            rustix::net::listen(&fd, 1).unwrap();
        }
        fd
    }

    #[test]
    fn a_listening_socket_is_found_by_its_file_and_named_by_this_process() {
        let dir = std::env::temp_dir().join(format!("qsock-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (live, bound_only, stale) = (dir.join("live"), dir.join("bound-only"), dir.join("stale"));
        let _live = socket_at(&live, true);
        let _bound_only = socket_at(&bound_only, false);
        drop(socket_at(&stale, true));
        let probe = |path: &Path| {
            let meta = std::fs::symlink_metadata(path).unwrap();
            (listening_on(path, meta.dev(), meta.ino()).unwrap(), proc_net_unix_listener(path).unwrap())
        };
        let (by_diag, by_proc) = probe(&live);
        let listening = by_diag.expect("the listening socket is found");
        assert_eq!(by_proc.map(|l| l.socket_ino), Some(listening.socket_ino), "both methods agree");
        assert_eq!(listening.uid, Some(rustix::process::getuid().as_raw()));
        let me = format!("pid {}, ", std::process::id());
        assert!(listening.describe().starts_with(&me), "{}", listening.describe());
        assert_eq!(probe(&bound_only), (None, None), "bound, not listening: nobody can connect");
        assert_eq!(probe(&stale), (None, None), "closed: a stale file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
