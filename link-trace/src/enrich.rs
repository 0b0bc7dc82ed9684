//! The enrichment stage: what the daemon adds to each event after the
//! kernel is done. It runs on a thread of its own between capture and output
//! because it makes blocking calls (stat, cgroup directory walks).
//!
//! Everything here is labelled as coming later than the call: file facts from
//! a stat carry `"facts_from": "stat"`, unlike the kernel's call-time facts.

use std::{
    borrow::Cow,
    collections::HashMap,
    ffi::OsStr,
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::MetadataExt,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

mod hold;

pub use hold::RenameInFlight;

use crate::{
    capture::DrainMark,
    event::{FileInfo, LinkEvent, Record, Undelivered},
    names,
    pipeline::{Records, close_and_count},
};

/// How long a directory's realpath is reused, and how many are kept.
const CANONICAL_DIR_TTL: Duration = Duration::from_secs(1);
const CANONICAL_DIR_CACHE: usize = 4096;

/// Rebuild the cgroup id → path table at most this often on a miss.
const CGROUP_RESCAN_INTERVAL: Duration = Duration::from_secs(1);

pub struct Enricher {
    /// Our own mount namespace: paths of callers in another one are looked
    /// up through /proc/<pid>/root.
    own_mnt_ns: Option<u32>,
    /// Our parent's pid and mount namespace, when that is not ours: a
    /// service sandbox (systemd's ProtectSystem= and friends) runs the daemon
    /// in a copy of the namespace of the manager that started it (systemd,
    /// PID 1). Paths of callers in the parent's namespace are looked up
    /// through /proc/<parent>/root, which outlives them, and canonicalized
    /// here, where they name the same files.
    outer_mnt_ns: Option<(u32, u32)>,
    cgroup_root: Option<PathBuf>,
    cgroup_paths: HashMap<u64, String>,
    last_scan: Option<Instant>,
    /// Directory → (looked up at, realpath); see canonical_dir.
    canonical_dirs: std::cell::RefCell<HashMap<PathBuf, (Instant, PathBuf)>>,
}

impl Enricher {
    pub fn new() -> Self {
        let mnt_ns = |pid: &str| {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .ok()
                .and_then(|link| ns_inode(&link))
        };
        let own_mnt_ns = mnt_ns("self");
        let parent = std::os::unix::process::parent_id();
        let outer_mnt_ns = mnt_ns(&parent.to_string())
            .filter(|outer| Some(*outer) != own_mnt_ns)
            .map(|outer| (parent, outer));
        Self {
            own_mnt_ns,
            outer_mnt_ns,
            cgroup_root: cgroup2_mount(),
            cgroup_paths: HashMap::new(),
            last_scan: None,
            canonical_dirs: Default::default(),
        }
    }

    /// Enriches the link events of one batch, sparing the stat of the new
    /// names the caller has unlinked since (see `unlinked_new_names`).
    pub fn enrich_batch(&mut self, records: &mut [Record]) {
        let mut unlinked = unlinked_new_names(records).into_iter().peekable();
        for (index, record) in records.iter_mut().enumerate() {
            if let Record::Event(event) = record {
                let removed = unlinked.next_if(|(at, _)| *at == index).map(|(_, why)| why);
                self.enrich(event, removed);
            }
        }
    }

    /// `removed`: why the new name is not stat'ed (it was unlinked since).
    pub fn enrich(&mut self, event: &mut LinkEvent, removed: Option<String>) {
        self.add_cgroup(event);
        self.add_file_facts(event, removed);
    }

    fn add_cgroup(&mut self, event: &mut LinkEvent) {
        let id = event.process.cgroup_id;
        if id == 0 {
            return;
        }
        if !self.cgroup_paths.contains_key(&id)
            && self
                .last_scan
                .is_none_or(|at| at.elapsed() >= CGROUP_RESCAN_INTERVAL)
        {
            self.rescan_cgroups();
        }
        if let Some(path) = self.cgroup_paths.get(&id) {
            event.process.container_id = container_id(path);
            event.process.cgroup_path = Some(path.clone());
        }
    }

    fn rescan_cgroups(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = &self.cgroup_root else {
            return;
        };
        self.cgroup_paths.clear();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(meta) = std::fs::metadata(&dir) {
                let relative = dir.strip_prefix(root).unwrap_or(Path::new(""));
                self.cgroup_paths
                    .insert(meta.ino(), format!("/{}", relative.display()));
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
    }

    /// Where to look the caller's path up from here: through
    /// /proc/<pid>/root for a caller in another mount namespace, and with
    /// /proc/self and /proc/thread-self meaning the caller, not the daemon.
    fn lookup_path<'a>(&self, event: &LinkEvent, resolved: &'a [u8]) -> Cow<'a, Path> {
        let path = caller_proc_path(event, resolved);
        let root_pid = if let Some(parent) = self.outer_parent(event) {
            parent
        } else if self.other_mnt_ns(event) {
            event.pid
        } else {
            return path;
        };
        Cow::Owned(
            Path::new(&format!("/proc/{root_pid}/root"))
                .join(path.strip_prefix("/").unwrap_or(&path)),
        )
    }

    /// The caller's paths do not name the files we see under those paths.
    fn other_mnt_ns(&self, event: &LinkEvent) -> bool {
        matches!((self.own_mnt_ns, event.process.mnt_ns), (Some(own), Some(theirs)) if own != theirs)
            && self.outer_parent(event).is_none()
    }

    /// Our parent's pid when the caller is in its (outer) mount namespace.
    fn outer_parent(&self, event: &LinkEvent) -> Option<u32> {
        self.outer_mnt_ns
            .filter(|(_, outer)| Some(*outer) == event.process.mnt_ns)
            .map(|(parent, _)| parent)
    }

    /// `resolved` with the symlinks in its directories followed (and in its
    /// last component too when `follow_last`), so that `/tmp/x/shadow` with
    /// `/tmp/x -> /etc` reads `/etc/shadow`. Only for callers in our mount
    /// namespace: through /proc/<pid>/root the answer would be a host path.
    /// realpath(3) of a directory, remembered for CANONICAL_DIR_TTL: events
    /// come in bursts into few directories, and a realpath is one lstat per
    /// component.
    fn canonical_dir(&self, dir: &Path) -> Option<PathBuf> {
        let mut cache = self.canonical_dirs.borrow_mut();
        if let Some((at, real)) = cache.get(dir)
            && at.elapsed() < CANONICAL_DIR_TTL
        {
            return Some(real.clone());
        }
        let real = std::fs::canonicalize(dir).ok()?;
        if cache.len() >= CANONICAL_DIR_CACHE {
            cache.clear();
        }
        cache.insert(dir.to_path_buf(), (Instant::now(), real.clone()));
        Some(real)
    }

    fn canonical(&self, event: &LinkEvent, resolved: &[u8], follow_last: bool) -> Option<Vec<u8>> {
        if self.other_mnt_ns(event) {
            return None;
        }
        // Not through /proc/<parent>/root for the outer namespace: the
        // answer must be a path, and ours name the same files.
        let lookup = caller_proc_path(event, resolved);
        let real = if follow_last {
            std::fs::canonicalize(&lookup).ok()?
        } else {
            match (lookup.parent(), lookup.file_name()) {
                (Some(parent), Some(name)) => self.canonical_dir(parent)?.join(name),
                _ => lookup.into_owned(),
            }
        };
        Some(real.into_os_string().into_vec())
    }

    fn add_file_facts(&mut self, event: &mut LinkEvent, removed: Option<String>) {
        let follow = event.flags & names::AT_SYMLINK_FOLLOW != 0;
        if event.file.is_none() {
            match event.oldpath.resolved.as_deref() {
                Some(resolved) => match stat(&self.lookup_path(event, resolved), follow) {
                    Ok(info) => event.file = Some(info),
                    Err(errno) => event.file_error = Some(names::errno_name(errno)),
                },
                None => {
                    event.file_error = Some(not_resolved("oldpath", event.oldpath.resolution_error))
                }
            }
        }
        if event.success {
            match (removed, event.newpath.resolved.as_deref()) {
                // A stat now could only fail or see a later file.
                (Some(why), _) => event.new_file_error = Some(why.into()),
                // The new name is a hard link itself: never follow it.
                (None, Some(resolved)) => match stat(&self.lookup_path(event, resolved), false) {
                    Ok(info) => event.new_file = Some(info),
                    Err(errno) => event.new_file_error = Some(names::errno_name(errno)),
                },
                (None, None) => {
                    event.new_file_error =
                        Some(not_resolved("newpath", event.newpath.resolution_error))
                }
            }
        }
        if let (Some(file), Some(new_file)) = (&event.file, &event.new_file) {
            let mismatch = (&file.dev, file.ino) != (&new_file.dev, new_file.ino);
            event.inode_mismatch = Some(mismatch);
            // Only a stat of the source can have seen a later rename onto
            // it. The clock is read here, after the new name's stat too,
            // so that events without a mismatch pay nothing for it; the few
            // µs it adds to the window can only let the caller's own
            // rename explain its own mismatch, which it could anyway.
            if mismatch && file.facts_from == "stat" {
                event.source_stat_ns = Some(crate::clock::boot_now_ns());
            }
        }
        if let Some(resolved) = event.oldpath.resolved.as_deref() {
            event.oldpath.canonical = self.canonical(event, resolved, follow);
        }
        if let Some(resolved) = event.newpath.resolved.as_deref() {
            event.newpath.canonical = self.canonical(event, resolved, false);
        }
    }
}

impl Default for Enricher {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a path argument's file was not stat'ed: it has no resolved path.
fn not_resolved(argument: &str, resolution_error: Option<&str>) -> Cow<'static, str> {
    format!(
        "{argument} not resolved ({})",
        resolution_error.unwrap_or("none")
    )
    .into()
}

/// A successful unlink or unlinkat from a context record.
struct Unlink {
    boot_ns: u64,
    pid: u32,
    seq: u64,
    syscall: &'static str,
}

/// The link events of `records` (by index, ascending) whose new name the
/// caller's own process unlinked after the link returned, according to the
/// batch's context records, each with the reason to give in
/// `new_file_error`. The daemon stats the new name only when it gets to the
/// event, after the unlink: that stat could only fail (on tmpfs, which keeps
/// no negative dentries, the slowest stat there is, and it contends for the
/// directory's lock with the caller) or see a later file, never this link.
///
/// The unlink must have entered after the link returned (the stream order
/// alone does not say so across threads) and come from the same process
/// (tgid): context records carry no mount namespace or root, so the same
/// process stands for the same one, as for `hold`. Renames are not used: a
/// rename between two names of one inode succeeds and does nothing. Without
/// unlink capture (no rule needs it, no --context-events) nothing is found
/// and every new name is stat'ed.
fn unlinked_new_names(records: &[Record]) -> Vec<(usize, String)> {
    let mut unlinks: HashMap<&[u8], Vec<Unlink>> = HashMap::new();
    for record in records {
        if let Record::Context(context) = record {
            let c = &context.0;
            if c.success
                && matches!(c.syscall, "unlink" | "unlinkat")
                && let Some(path) = c.oldpath.resolved.as_deref()
            {
                unlinks.entry(path).or_default().push(Unlink {
                    boot_ns: c.boot_ns,
                    pid: c.pid,
                    seq: c.seq,
                    syscall: c.syscall,
                });
            }
        }
    }
    if unlinks.is_empty() {
        return Vec::new();
    }
    for same_path in unlinks.values_mut() {
        same_path.sort_by_key(|u| u.boot_ns);
    }
    let mut found = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let Record::Event(link) = record else {
            continue;
        };
        let Some(same_path) = link
            .success
            .then_some(())
            .and(link.newpath.resolved.as_deref())
            .and_then(|path| unlinks.get(path))
        else {
            continue;
        };
        let exit_ns = link.exit_ns();
        let after = same_path.partition_point(|u| u.boot_ns < exit_ns);
        if let Some(u) = same_path[after..].iter().find(|u| u.pid == link.pid) {
            found.push((
                index,
                format!("unlinked by the caller ({} seq {})", u.syscall, u.seq),
            ));
        }
    }
    found
}

/// `resolved` with /proc/self and /proc/thread-self meaning the caller.
fn caller_proc_path<'a>(event: &LinkEvent, resolved: &'a [u8]) -> Cow<'a, Path> {
    let path = Path::new(OsStr::from_bytes(resolved));
    // A path with no "self" in it has no such component: one byte search
    // instead of two component-by-component prefix walks per look-up.
    if !resolved.windows(4).any(|w| w == b"self") {
        return Cow::Borrowed(path);
    }
    if let Ok(rest) = path.strip_prefix("/proc/self") {
        Cow::Owned(Path::new(&format!("/proc/{}", event.pid)).join(rest))
    } else if let Ok(rest) = path.strip_prefix("/proc/thread-self") {
        Cow::Owned(Path::new(&format!("/proc/{}/task/{}", event.pid, event.tid)).join(rest))
    } else {
        Cow::Borrowed(path)
    }
}

fn stat(path: &Path, follow: bool) -> Result<FileInfo, i32> {
    let meta = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    let meta = meta.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let dev = meta.dev();
    Ok(FileInfo::new(
        "stat",
        format!("{}:{}", libc::major(dev), libc::minor(dev)),
        meta.ino(),
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.nlink() as u32,
    ))
}

/// "mnt:[4026531832]" → 4026531832.
fn ns_inode(link: &Path) -> Option<u32> {
    let text = link.to_str()?;
    text.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The container id a cgroup path names, for the common runtimes:
/// docker (`/docker/<id>`, `docker-<id>.scope`), containerd
/// (`cri-containerd-<id>.scope`, `/kubepods/.../<id>`), cri-o
/// (`crio-<id>.scope`) and podman (`libpod-<id>.scope`).
pub fn container_id(cgroup_path: &str) -> Option<String> {
    const RUNTIMES: [&str; 5] = ["docker", "containerd", "crio", "libpod", "kubepods"];
    if !RUNTIMES.iter().any(|runtime| cgroup_path.contains(runtime)) {
        return None;
    }
    cgroup_path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .unwrap_or(name);
        (id.len() == 64
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| id.to_owned())
    })
}

/// Runs the stage: takes record batches from capture, enriches events
/// (context records pass as they are: they are lean by design), hands each
/// batch to detection. An event whose `inode_mismatch` may yet be explained
/// by a rename further down the stream is held, with everything behind it,
/// until its verdict is in (see `hold`); `drained` tells how far capture
/// has read the ring. Returns what it could not hand on.
pub fn spawn(
    rx: mpsc::Receiver<Records>,
    tx: mpsc::Sender<Records>,
    drained: DrainMark,
    renames: Option<Box<dyn RenameInFlight>>,
) -> std::io::Result<std::thread::JoinHandle<Undelivered>> {
    // A timer for the receive while an event is held: the only async use
    // on this thread, so a runtime of its own with the timer alone.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("link-trace-enrich".into())
        .spawn(move || run(rx, tx, &timer, Enricher::new(), &drained, renames))
}

/// What the stage's receive gave.
enum Received {
    Batch(Records),
    /// A held event's deadline passed with nothing new.
    TimedOut,
    Closed,
}

fn receive(
    rx: &mut mpsc::Receiver<Records>,
    timer: &tokio::runtime::Runtime,
    deadline: Option<Instant>,
) -> Received {
    let received = match deadline {
        // The common path: nothing held, wait as long as it takes.
        None => rx.blocking_recv(),
        Some(deadline) => {
            let deadline = tokio::time::Instant::from_std(deadline);
            // The timeout is built inside the runtime: its timer needs it.
            match timer.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                Ok(received) => received,
                Err(_) => return Received::TimedOut,
            }
        }
    };
    received.map_or(Received::Closed, Received::Batch)
}

/// Ends the waits that are due (see `Hold::expire`). The mark is read
/// before the queue is looked at: the batches of a drain are queued before
/// its mark, so an empty queue means none the mark vouches for is still
/// to come. A queued batch is taken first (at once: the deadline is past).
fn expire(
    hold: &mut hold::Hold,
    rx: &mpsc::Receiver<Records>,
    drained: &DrainMark,
    now: Instant,
) -> Records {
    // Nothing due (the common case: nothing held at all).
    if hold.deadline().is_none_or(|due| due > now) {
        return Records::new();
    }
    let drained_ns = drained.get();
    if !rx.is_empty() {
        return Records::new();
    }
    hold.expire(now, drained_ns)
}

fn run(
    mut rx: mpsc::Receiver<Records>,
    tx: mpsc::Sender<Records>,
    timer: &tokio::runtime::Runtime,
    mut enricher: Enricher,
    drained: &DrainMark,
    renames: Option<Box<dyn RenameInFlight>>,
) -> Undelivered {
    let mut hold = hold::Hold::with_renames(renames);
    let mut undelivered = Undelivered::default();
    loop {
        let (ready, closed) = match receive(&mut rx, timer, hold.deadline()) {
            Received::Batch(mut records) => {
                enricher.enrich_batch(&mut records);
                let now = Instant::now();
                let mut ready = hold.push_batch(records, now);
                ready.extend(expire(&mut hold, &rx, drained, now));
                (ready, false)
            }
            Received::TimedOut => (expire(&mut hold, &rx, drained, Instant::now()), false),
            // Nothing more will come: every held event goes on unexplained.
            Received::Closed => (hold.flush(), true),
        };
        if !ready.is_empty()
            && let Err(refused) = tx.blocking_send(ready)
        {
            undelivered.count_all(&refused.0);
            // Detection is gone: count everything held or still queued, then stop.
            undelivered.count_all(&hold.flush());
            undelivered.add(close_and_count(&mut rx));
            break;
        }
        if closed {
            break;
        }
    }
    undelivered
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test process's own, named after `test`.
    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("link-trace-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn finds_container_ids_of_common_runtimes() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-burstable.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/besteffort/pod1234/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
    }

    #[test]
    fn ignores_paths_without_containers() {
        assert_eq!(container_id("/"), None);
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-2.scope"),
            None
        );
        assert_eq!(
            container_id(&format!("/system.slice/{ID}")),
            None,
            "no runtime named"
        );
        assert_eq!(container_id("/docker/not-an-id"), None);
    }

    #[test]
    fn proc_self_means_the_caller_and_other_paths_are_untouched() {
        let event = crate::event::sample_event(Some(b"a"), Some(b"b"), 0);
        let (pid, tid) = (event.pid, event.tid);
        for (resolved, expected) in [
            ("/proc/self/fd/3".to_owned(), format!("/proc/{pid}/fd/3")),
            (
                "/proc/thread-self/fd/3".to_owned(),
                format!("/proc/{pid}/task/{tid}/fd/3"),
            ),
            ("//proc/./self/cwd".to_owned(), format!("/proc/{pid}/cwd")),
            ("/tmp/self/x".to_owned(), "/tmp/self/x".to_owned()),
            ("/tmp/a".to_owned(), "/tmp/a".to_owned()),
        ] {
            assert_eq!(
                caller_proc_path(&event, resolved.as_bytes()),
                Path::new(&expected),
                "{resolved}"
            );
        }
    }

    /// The real stage, with files whose stat shows a mismatch: held until
    /// the deadline on an idle stream, explained at once by the caller's
    /// rename onto the source, and flushed in order when the input closes.
    #[test]
    fn the_stage_holds_a_mismatch_for_its_verdict_and_loses_nothing_at_close() {
        let dir = scratch_dir("hold");
        let (source, new_name) = (dir.join("f"), dir.join("f.bak"));
        std::fs::write(&source, b"new version").unwrap();
        std::fs::write(&new_name, b"old version").unwrap();
        let bytes = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let link = |seq: u64| {
            let mut e = crate::event::sample_event(Some(b"f"), Some(b"f.bak"), 0);
            e.seq = seq;
            e.boot_ns = crate::clock::boot_now_ns() - 2_000_000;
            e.oldpath.resolved = Some(bytes(&source));
            e.newpath.resolved = Some(bytes(&new_name));
            Record::Event(Box::new(e))
        };
        let event = |record: &Record| match record {
            Record::Event(e) => (
                e.seq,
                e.inode_mismatch,
                e.inode_mismatch_explained_by.clone(),
            ),
            _ => panic!("not an event: {record:?}"),
        };
        let (in_tx, in_rx) = crate::pipeline::channel();
        let (out_tx, mut out_rx) = crate::pipeline::channel();
        let drained = DrainMark::default();
        let stage = spawn(in_rx, out_tx, drained.clone(), None).unwrap();

        let sent = Instant::now();
        in_tx.blocking_send(vec![link(1)]).unwrap();
        // Past the deadline, but capture has not drained since the stat
        // (a stopped daemon): the rename may still be in the ring.
        std::thread::sleep(hold::DEADLINE * 2);
        assert!(out_rx.try_recv().is_err(), "released before a drain");
        drained.publish(crate::clock::boot_now_ns());
        let out = out_rx.blocking_recv().unwrap();
        let waited = sent.elapsed();
        assert_eq!(out.len(), 1);
        assert_eq!(event(&out[0]), (1, Some(true), None));
        assert!(waited >= hold::DEADLINE * 2, "released after {waited:?}");

        let mut rename = crate::event::sample_event(Some(b"f.new"), Some(b"f"), 0);
        rename.syscall = "rename";
        rename.seq = 5;
        rename.boot_ns = crate::clock::boot_now_ns() - 1_000_000;
        rename.newpath.resolved = Some(bytes(&source));
        let rename = Record::Context(Box::new(crate::event::ContextEvent(rename)));
        in_tx.blocking_send(vec![link(2), rename]).unwrap();
        let out = out_rx.blocking_recv().unwrap();
        assert_eq!(out.len(), 2);
        let (seq, mismatch, why) = event(&out[0]);
        assert_eq!((seq, mismatch), (2, Some(true)));
        assert_eq!(why.map(|w| (w.seq, w.pid)), Some((5, 7)));

        let mut plain = crate::event::sample_event(Some(b"a"), Some(b"b"), -2);
        plain.seq = 4;
        in_tx
            .blocking_send(vec![link(3), Record::Event(Box::new(plain))])
            .unwrap();
        drop(in_tx);
        let mut seqs = Vec::new();
        while let Some(out) = out_rx.blocking_recv() {
            seqs.extend(out.iter().map(|r| event(r).0));
        }
        assert_eq!(seqs, [3, 4]);
        assert_eq!(stage.join().unwrap(), Undelivered::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A context record of `syscall` on `path` by `pid`, entered at `boot_ns`.
    fn removal(syscall: &'static str, path: &[u8], pid: u32, boot_ns: u64, seq: u64) -> Record {
        let mut e = crate::event::sample_event(Some(b"x"), None, 0);
        (e.syscall, e.pid, e.boot_ns, e.seq) = (syscall, pid, boot_ns, seq);
        e.oldpath.resolved = Some(path.to_vec());
        Record::Context(Box::new(crate::event::ContextEvent(e)))
    }

    /// A successful link by pid 7 onto `new`, returned at 1_250 ns.
    fn link_onto(new: &[u8]) -> Record {
        let mut e = crate::event::sample_event(Some(b"a"), Some(b"b"), 0);
        e.oldpath.resolved = Some(b"/nonexistent-link-trace-test/a".to_vec());
        e.newpath.resolved = Some(new.to_vec());
        Record::Event(Box::new(e))
    }

    #[test]
    fn only_the_callers_later_unlink_of_the_new_name_spares_its_stat() {
        const B: &[u8] = b"/t/b";
        let link = || link_onto(B);
        let found = |records: Vec<Record>| unlinked_new_names(&records);
        // Its own unlink, entered after the link returned, later or earlier
        // in the stream (another thread's record may come first).
        assert_eq!(
            found(vec![link(), removal("unlink", B, 7, 2_000, 5)]),
            [(0, "unlinked by the caller (unlink seq 5)".to_owned())]
        );
        assert_eq!(
            found(vec![removal("unlinkat", B, 7, 1_250, 6), link()]),
            [(1, "unlinked by the caller (unlinkat seq 6)".to_owned())]
        );
        // The nearest of several, and each link its own.
        assert_eq!(
            found(vec![
                link(),
                removal("unlink", B, 7, 9_000, 9),
                removal("unlink", B, 7, 2_000, 8),
                link(),
            ]),
            [
                (0, "unlinked by the caller (unlink seq 8)".to_owned()),
                (3, "unlinked by the caller (unlink seq 8)".to_owned()),
            ]
        );
        let mut failed_unlink = removal("unlink", B, 7, 2_000, 5);
        if let Record::Context(c) = &mut failed_unlink {
            (c.0.success, c.0.ret) = (false, -2);
        }
        let mut failed_link = link();
        if let Record::Event(e) = &mut failed_link {
            (e.success, e.ret) = (false, -17);
        }
        for (why, records) in [
            (
                "another process",
                vec![link(), removal("unlink", B, 8, 2_000, 5)],
            ),
            (
                "entered before the link returned",
                vec![link(), removal("unlink", B, 7, 1_249, 5)],
            ),
            (
                "another name",
                vec![link(), removal("unlink", b"/t/bb", 7, 2_000, 5)],
            ),
            ("a failed unlink", vec![link(), failed_unlink]),
            (
                "a rename away (a no-op between names of one inode)",
                vec![link(), {
                    let mut r = removal("rename", B, 7, 2_000, 5);
                    if let Record::Context(c) = &mut r {
                        c.0.newpath.resolved = Some(b"/t/a".to_vec());
                    }
                    r
                }],
            ),
            (
                "a failed link",
                vec![failed_link, removal("unlink", B, 7, 2_000, 5)],
            ),
            ("no context records", vec![link(), link()]),
        ] {
            assert_eq!(found(records), [], "{why}");
        }
    }

    /// The stage's enrichment with a real new name: still there on disk, it
    /// is not stat'ed when the caller's unlink of it is in the batch, and is
    /// without; a missing one gets the stat's errno.
    #[test]
    fn the_new_name_is_stated_unless_the_caller_unlinked_it() {
        let dir = scratch_dir("unlinked");
        let new_name = dir.join("b");
        std::fs::write(&new_name, b"x").unwrap();
        let path = new_name.as_os_str().as_bytes();
        let mut enricher = Enricher::new();
        let mut enriched = |mut records: Vec<Record>| {
            enricher.enrich_batch(&mut records);
            match &records[0] {
                Record::Event(e) => (e.new_file.as_ref().map(|f| f.ino), e.new_file_error.clone()),
                other => panic!("not an event: {other:?}"),
            }
        };
        let ino = std::fs::metadata(&new_name).unwrap().ino();
        assert_eq!(enriched(vec![link_onto(path)]), (Some(ino), None));
        assert_eq!(
            enriched(vec![link_onto(path), removal("unlink", path, 7, 2_000, 3)]),
            (None, Some("unlinked by the caller (unlink seq 3)".into()))
        );
        // Someone else's unlink says nothing about the caller's name.
        assert_eq!(
            enriched(vec![link_onto(path), removal("unlink", path, 9, 2_000, 3)]),
            (Some(ino), None)
        );
        std::fs::remove_file(&new_name).unwrap();
        assert_eq!(
            enriched(vec![link_onto(path)]),
            (None, Some("ENOENT".into()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_namespace_links() {
        assert_eq!(ns_inode(Path::new("mnt:[4026531832]")), Some(4026531832));
        assert_eq!(ns_inode(Path::new("garbage")), None);
    }

    #[test]
    fn stat_reports_mode_bits_and_owner() {
        let dir = scratch_dir("enrich");
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .unwrap();
        let info = stat(&file, false).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(
            (info.ino, info.uid, info.nlink),
            (meta.ino(), meta.uid(), 1)
        );
        assert_eq!(
            (
                info.file_type,
                info.permissions.as_str(),
                info.setuid,
                info.setgid
            ),
            ("regular", "4755", true, false)
        );
        assert_eq!(stat(&dir.join("missing"), false).unwrap_err(), libc::ENOENT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
