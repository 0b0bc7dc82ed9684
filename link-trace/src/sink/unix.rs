//! The Unix socket sink: a `SOCK_STREAM` listener that streams every record,
//! as lines, to each connected subscriber from the moment it connects.
//!
//! A subscriber never stalls the sink or the others: sockets are
//! non-blocking, and what a subscriber's socket does not take at once waits
//! in that subscriber's own buffer of at most `subscriber_buffer` bytes. A
//! subscriber that falls further behind is disconnected; the records it
//! did not receive in full are counted as `missed` (per subscriber, so a
//! record missed by two subscribers counts twice). So, for each subscriber,
//! every record delivered while it was connected is received whole or
//! counted. A disconnected subscriber may have received the first part of
//! one record (a last line without a newline), which it must discard; that
//! record is among the missed.
//!
//! A record delivered while nobody is connected is not a loss: there was
//! nobody to lose it. It counts as delivered and, apart, in
//! `records_without_subscriber`.

use std::{
    collections::VecDeque,
    fs::Permissions,
    io::{self, Read},
    os::{
        fd::AsRawFd,
        unix::{
            fs::{FileTypeExt, MetadataExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sched::{CloneFlags, unshare},
    sys::{
        socket::{
            AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, bind, listen, send,
            socket,
        },
        stat::{Mode, umask},
    },
};
use serde::{Deserialize, Serialize};

use super::{Batch, Count, DeliverError, SinkError, Transport};
use crate::config::UnixOutput;

const BACKLOG: i32 = 128;
/// How long the sink keeps writing buffered records to slow subscribers at
/// exit before it gives up on them (and counts what they missed).
const FINISH_FLUSH: Duration = Duration::from_secs(2);

/// Socket files this process has bound (dev, ino), so that a reload that
/// re-creates an output at the same path replaces its own socket rather
/// than refusing it as another process's. Touched only at open and close.
static BOUND: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// Subscriber counters of one socket output, read by stats records.
#[derive(Debug, Default)]
pub struct SubscriberCounters {
    pub connected: AtomicU64,
    pub accepted: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub missed: Count,
    pub without_subscriber: Count,
}

/// A snapshot of a socket output's subscribers, in `stats` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SubscriberReport {
    /// Subscribers connected now.
    pub connected: u64,
    /// Subscribers accepted since the output started.
    pub accepted: u64,
    /// Subscribers disconnected for falling more than `subscriber_buffer`
    /// bytes behind.
    pub dropped_slow: u64,
    /// Records some subscriber did not receive in full (it was dropped, went
    /// away, or was still behind at exit), summed over subscribers.
    pub missed_records: u64,
    pub missed_events: u64,
    /// Records delivered while no subscriber was connected (not a loss).
    pub records_without_subscriber: u64,
    pub events_without_subscriber: u64,
}

impl SubscriberCounters {
    pub fn report(&self) -> SubscriberReport {
        SubscriberReport {
            connected: self.connected.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            dropped_slow: self.dropped_slow.load(Relaxed),
            missed_records: self.missed.records.load(Relaxed),
            missed_events: self.missed.events.load(Relaxed),
            records_without_subscriber: self.without_subscriber.records.load(Relaxed),
            events_without_subscriber: self.without_subscriber.events.load(Relaxed),
        }
    }
}

pub struct UnixSink {
    path: PathBuf,
    mode: u32,
    buffer_limit: usize,
    listener: UnixListener,
    /// (dev, ino) of the socket file we bound.
    identity: (u64, u64),
    subscribers: Vec<Subscriber>,
    counters: Arc<SubscriberCounters>,
}

impl UnixSink {
    /// Binds and listens at `path` with `mode`. A stale socket file there is
    /// replaced; a live one (another process listening) or any other kind
    /// of file is an error.
    pub fn open(config: &UnixOutput) -> io::Result<UnixSink> {
        let dir = config
            .path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            ));
        }
        clear_stale(&config.path)?;
        let listener = bind_listener(&config.path, config.mode)?;
        let identity = register(&config.path)?;
        Ok(UnixSink {
            path: config.path.clone(),
            mode: config.mode,
            buffer_limit: config.subscriber_buffer,
            listener,
            identity,
            subscribers: Vec::new(),
            counters: Arc::default(),
        })
    }

    /// Takes every connection waiting in the backlog.
    fn accept_new(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.subscribers.push(Subscriber::new(stream));
                    self.counters.accepted.fetch_add(1, Relaxed);
                    self.counters.connected.fetch_add(1, Relaxed);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                // WouldBlock; or out of descriptors, and the connection
                // waits in the backlog until one is free.
                Err(_) => break,
            }
        }
    }

    /// Binds again when someone removed the socket file (but not when a
    /// newer output of ours took the path over).
    fn check_socket_file(&mut self) {
        let replaced = !BOUND
            .lock()
            .is_ok_and(|bound| bound.contains(&self.identity));
        if replaced
            || !matches!(std::fs::symlink_metadata(&self.path), Err(e) if e.kind() == io::ErrorKind::NotFound)
        {
            return;
        }
        self.accept_new();
        if let Ok(listener) = bind_listener(&self.path, self.mode)
            && let Ok(identity) = register(&self.path)
        {
            unregister(self.identity);
            self.listener = listener;
            self.identity = identity;
        }
    }
}

/// Removes a socket file nobody listens on; refuses anything else.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    let identity = (meta.dev(), meta.ino());
    let ours = BOUND.lock().is_ok_and(|bound| bound.contains(&identity));
    if ours {
        // Taken over: the output that bound it must not bind it again.
        unregister(identity);
    } else {
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process is listening on {}", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Binds on a short-lived thread of its own, so it can set a umask without
/// changing the rest of the process's.
fn bind_listener(path: &Path, mode: u32) -> io::Result<UnixListener> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("link-trace-bind".into())
            .spawn_scoped(scope, || bind_with_umask(path, mode))?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the socket bind thread panicked")))
    })
}

fn bind_with_umask(path: &Path, mode: u32) -> io::Result<UnixListener> {
    // The umask is shared by all threads; unsharing CLONE_FS gives this one
    // its own, so the socket file is created with no more than `mode` and no
    // other thread's files are affected. Where unshare is refused (seccomp),
    // the file starts with the process umask, but the chmod below still
    // comes before listen: until then every connect is refused.
    if unshare(CloneFlags::CLONE_FS).is_ok() {
        umask(Mode::from_bits_truncate(!mode & 0o777));
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path).map_err(|e| match e {
        Errno::ENAMETOOLONG => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is too long (at most 107 bytes)",
                path.display()
            ),
        ),
        other => other.into(),
    })?;
    bind(fd.as_raw_fd(), &addr)?;
    let listening = std::fs::set_permissions(path, Permissions::from_mode(mode))
        .and_then(|()| Ok(listen(&fd, Backlog::new(BACKLOG)?)?));
    if let Err(e) = listening {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

fn register(path: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path)?;
    let identity = (meta.dev(), meta.ino());
    if let Ok(mut bound) = BOUND.lock() {
        bound.push(identity);
    }
    Ok(identity)
}

fn unregister(identity: (u64, u64)) {
    if let Ok(mut bound) = BOUND.lock()
        && let Some(at) = bound.iter().position(|b| *b == identity)
    {
        bound.swap_remove(at);
    }
}

/// Why a subscriber is let go.
#[derive(Clone, Copy)]
enum Leave {
    /// More than `subscriber_buffer` bytes behind.
    Slow,
    /// It closed its end, its socket failed, or the sink is stopping.
    Gone,
}

struct Subscriber {
    stream: UnixStream,
    /// Bytes accepted for this subscriber and not yet written to its socket.
    pending: VecDeque<u8>,
    /// Bytes written to its socket since it connected.
    sent: u64,
    /// Stream offset at which each record not yet fully written ends, and
    /// whether it is an event.
    unsent: VecDeque<(u64, bool)>,
}

impl Subscriber {
    fn new(stream: UnixStream) -> Self {
        Subscriber {
            stream,
            pending: VecDeque::new(),
            sent: 0,
            unsent: VecDeque::new(),
        }
    }

    /// Writes what the socket takes now; Err when the subscriber is gone.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match send_now(&self.stream, front) {
                Ok(n) => {
                    self.pending.drain(..n);
                    self.sent += n as u64;
                    while self
                        .unsent
                        .front()
                        .is_some_and(|(end, _)| *end <= self.sent)
                    {
                        self.unsent.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands a batch to this subscriber: written as far as its socket takes
    /// it now, the rest buffered.
    fn offer(&mut self, batch: &Batch, limit: usize) -> Result<(), Leave> {
        let flushed = self.flush();
        let base = self.sent + self.pending.len() as u64;
        let mut gone = flushed.is_err();
        let mut written = 0;
        if !gone && self.pending.is_empty() {
            match send_now(&self.stream, &batch.bytes) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => gone = true,
            }
        }
        self.sent += written as u64;
        for (&end, &is_event) in batch.ends.iter().zip(&batch.is_event) {
            let end = base + end as u64;
            if end > self.sent {
                self.unsent.push_back((end, is_event));
            }
        }
        if gone {
            return Err(Leave::Gone);
        }
        let rest = &batch.bytes[written..];
        if self.pending.len() + rest.len() > limit {
            return Err(Leave::Slow);
        }
        self.pending.extend(rest);
        Ok(())
    }

    /// Whether the subscriber has closed its end (it is not expected to
    /// send anything; what it sends is read and ignored).
    fn hung_up(&mut self) -> bool {
        let mut scratch = [0u8; 512];
        match self.stream.read(&mut scratch) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }

    /// Counts what it missed; the socket closes when it is dropped.
    fn leave(&self, why: Leave, counters: &SubscriberCounters) {
        let events = self.unsent.iter().filter(|(_, is_event)| *is_event).count();
        counters.missed.add(self.unsent.len() as u64, events as u64);
        if matches!(why, Leave::Slow) {
            counters.dropped_slow.fetch_add(1, Relaxed);
        }
        counters.connected.fetch_sub(1, Relaxed);
    }
}

/// One non-blocking send that cannot raise SIGPIPE.
fn send_now(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match send(
            stream.as_raw_fd(),
            bytes,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) if !bytes.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl Transport for UnixSink {
    fn deliver(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        self.accept_new();
        if self.subscribers.is_empty() {
            self.counters
                .without_subscriber
                .add(batch.len() as u64, batch.events_in(0..batch.len()));
            return Ok(());
        }
        let (limit, counters) = (self.buffer_limit, &self.counters);
        self.subscribers
            .retain_mut(|subscriber| match subscriber.offer(batch, limit) {
                Ok(()) => true,
                Err(why) => {
                    subscriber.leave(why, counters);
                    false
                }
            });
        Ok(())
    }

    fn idle(&mut self) {
        self.accept_new();
        let counters = &self.counters;
        self.subscribers.retain_mut(|subscriber| {
            let gone = subscriber.flush().is_err() || subscriber.hung_up();
            if gone {
                subscriber.leave(Leave::Gone, counters);
            }
            !gone
        });
        self.check_socket_file();
    }

    /// Gives slow subscribers up to FINISH_FLUSH to take what is buffered
    /// for them, then closes every connection.
    fn finish(&mut self) -> Result<(), SinkError> {
        let deadline = Instant::now() + FINISH_FLUSH;
        let counters = &self.counters;
        loop {
            self.subscribers.retain_mut(|subscriber| {
                let gone = subscriber.flush().is_err();
                if gone {
                    subscriber.leave(Leave::Gone, counters);
                }
                !gone
            });
            if self.subscribers.iter().all(|s| s.pending.is_empty()) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for subscriber in self.subscribers.drain(..) {
            subscriber.leave(Leave::Gone, counters);
        }
        Ok(())
    }

    fn subscriber_counters(&self) -> Option<Arc<SubscriberCounters>> {
        Some(self.counters.clone())
    }
}

impl Drop for UnixSink {
    /// Removes the socket file, unless it is no longer ours (a reload bound
    /// a new one at the same path).
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
        unregister(self.identity);
    }
}

#[cfg(test)]
mod tests;
