//! Thread and process churn: thousands of short-lived tasks, each making
//! one traced linkat and one unlink, while one more linkat is held in
//! flight (its new path sits in a userfaultfd page the kernel waits on)
//! from before the churn until after it. Every call must be delivered, with
//! no loss of any kind: an in-flight slot must never be lost to another
//! task's (eviction of the in-flight map under churn).

use std::{collections::HashSet, ffi::CString, path::Path, thread::JoinHandle};

use crate::harness::{Run, TestDir, Tracer, cstr, my_pid, privileged, unique_comm};

/// Tasks started in all, and how many run at once.
const THREADS: usize = 4000;
const PROCESSES: usize = 3000;
const AT_ONCE: usize = 8;

#[test]
fn thread_churn_loses_no_call() {
    if !privileged("thread_churn_loses_no_call") {
        return;
    }
    // A comm of this test's own (thread names are set before the body runs).
    const COMM: &str = "lt-churn-thr";
    let dir = TestDir::new("/tmp", "churn-threads");
    let src = dir.file("src");
    let tracer = Tracer::start(&["--pid", &my_pid(), "--comm", COMM, "--context-events"]);
    let blocked = BlockedLink::start(COMM, &src, &dir.join("held"));
    std::thread::scope(|scope| {
        for spawner in 0..AT_ONCE {
            let (src, dir) = (&src, &dir);
            scope.spawn(move || {
                for i in (spawner..THREADS).step_by(AT_ONCE) {
                    churn_thread(COMM, i, cstr(src), cstr(&dir.join(&format!("n{i}"))));
                }
            });
        }
    });
    let held_tid = blocked.finish();
    let run = tracer.stop();
    check_every_call_delivered(&run, &dir.path, THREADS, held_tid);
}

#[test]
fn process_churn_loses_no_call() {
    if !privileged("process_churn_loses_no_call") {
        return;
    }
    // The children have tgids of their own, so the tracer filters on comm
    // alone: one of this run's own, so that another suite on the machine
    // (another checkout, container or CI job) never shares it.
    let unique = unique_comm();
    let dir = TestDir::new("/tmp", "churn-procs");
    let src = cstr(&dir.file("src"));
    let comm = CString::new(unique.as_str()).unwrap();
    // Built before any fork: the child may not allocate.
    let paths: Vec<CString> = (0..PROCESSES)
        .map(|i| cstr(&dir.join(&format!("n{i}"))))
        .collect();
    let tracer = Tracer::start(&["--comm", &unique, "--context-events"]);
    let blocked = BlockedLink::start(&unique, &dir.join("src"), &dir.join("held"));
    for wave in paths.chunks(AT_ONCE) {
        let children: Vec<libc::pid_t> = wave
            .iter()
            .map(|new| {
                // SAFETY: the child makes only async-signal-safe calls
                // (prctl, linkat, unlink, _exit) on memory prepared before.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
                if pid == 0 {
                    // SAFETY: as above.
                    unsafe {
                        libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
                        let ok = libc::linkat(
                            libc::AT_FDCWD,
                            src.as_ptr(),
                            libc::AT_FDCWD,
                            new.as_ptr(),
                            0,
                        ) == 0
                            && libc::unlink(new.as_ptr()) == 0;
                        libc::_exit(if ok { 0 } else { 1 });
                    }
                }
                pid
            })
            .collect();
        for pid in children {
            let mut status = 0;
            // SAFETY: waits for our own child.
            let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(waited, pid, "waitpid");
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child {pid}: linkat or unlink failed (status {status:#x})"
            );
        }
    }
    let held_tid = blocked.finish();
    let run = tracer.stop();
    check_every_call_delivered(&run, &dir.path, PROCESSES, held_tid);
}

/// A call that began before the tracer attached has no entry to pair with:
/// its exit is counted as exit_without_enter, not reported as an event, and
/// freeing slots at thread exit does not change that.
#[test]
fn a_call_in_flight_at_attach_is_counted_as_exit_without_enter() {
    if !privileged("a_call_in_flight_at_attach_is_counted_as_exit_without_enter") {
        return;
    }
    const COMM: &str = "lt-pre-attach";
    let dir = TestDir::new("/tmp", "before-attach");
    let blocked = BlockedLink::start(COMM, &dir.file("src"), &dir.join("held"));
    let tracer = Tracer::start(&["--pid", &my_pid(), "--comm", COMM]);
    let held_tid = blocked.finish();
    let run = tracer.stop();
    run.assert_clean_exit();
    assert_eq!(
        run.events().filter(|e| e["tid"] == held_tid).count(),
        0,
        "a call whose entry was not seen has no event"
    );
    let stats = run.final_stats();
    let lost: Vec<(String, u64)> = stats["losses"]
        .as_array()
        .expect("loss counts")
        .iter()
        .filter(|l| l["total"] != 0)
        .map(|l| {
            (
                l["reason"].as_str().unwrap_or("?").to_owned(),
                l["total"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(lost, [("exit_without_enter".to_owned(), 1)], "{stats:#}");
}

/// A call is held in flight while LIVE threads each make a call and stay
/// alive (holding their slots) and 2000 more come and go: with ~1000 live
/// calling threads the in-flight map must evict nothing, not even the
/// held call's slot, the least recently used.
#[test]
fn live_threads_keep_their_slots_through_churn() {
    if !privileged("live_threads_keep_their_slots_through_churn") {
        return;
    }
    const LIVE: usize = 1000;
    const CHURN: usize = 2000;
    const COMM: &str = "lt-churn-live";
    let dir = TestDir::new("/tmp", "churn-live");
    let src = dir.file("src");
    let tracer = Tracer::start(&["--pid", &my_pid(), "--comm", COMM, "--context-events"]);
    let (called, release) = (
        std::sync::Barrier::new(LIVE + 1),
        std::sync::Barrier::new(LIVE + 1),
    );
    // Held first, so its slot is the least recently used of all.
    let blocked = BlockedLink::start(COMM, &src, &dir.join("held"));
    let held_tid = std::thread::scope(|scope| {
        for i in 0..LIVE {
            let (old, new) = (cstr(&src), cstr(&dir.join(&format!("n{i}"))));
            let (called, release) = (&called, &release);
            std::thread::Builder::new()
                .name(COMM.into())
                .stack_size(64 * 1024)
                .spawn_scoped(scope, move || {
                    let result = link_and_unlink(&old, &new);
                    called.wait();
                    release.wait();
                    result.unwrap_or_else(|e| panic!("live thread {i}: {e}"));
                })
                .expect("spawn a live thread");
        }
        called.wait();
        for i in LIVE..LIVE + CHURN {
            churn_thread(COMM, i, cstr(&src), cstr(&dir.join(&format!("n{i}"))));
        }
        let held_tid = blocked.finish();
        release.wait();
        held_tid
    });
    let run = tracer.stop();
    check_every_call_delivered(&run, &dir.path, LIVE + CHURN, held_tid);
}

/// One short-lived thread named `comm` that links `old` to `new` and
/// unlinks `new`; waits for it.
/// The daemon keeps a mismatched link waiting while the link's thread is
/// inside a rename (enrich::hold): the in-flight map, read from userspace,
/// must say so for a rename held in the kernel, and not for a held linkat
/// or once the rename is done. The calls are made by another process (this
/// test binary again, `held_call_in_another_process`): programs loaded in
/// this process ignore its own calls.
#[test]
fn the_in_flight_map_shows_a_thread_inside_a_rename() {
    use clap::Parser;
    use link_trace::enrich::RenameInFlight;
    use std::io::{BufRead, Write};
    if !privileged("the_in_flight_map_shows_a_thread_inside_a_rename") {
        return;
    }
    let dir = TestDir::new("/tmp", "inflight-rename");
    dir.file("to-rename");
    dir.file("to-link");
    let cli = link_trace::cli::Cli::try_parse_from(["link-trace"]).expect("arguments");
    let settings = link_trace::config::Settings::merge(None, Default::default(), &cli);
    // The loader forwards kernel log messages on a tokio task.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let mut tracer = link_trace::loader::load(&settings).expect("load the programs");
    tracer
        .context
        .attach(
            tracer.programs.as_mut(),
            link_trace::rules::SyscallSet::CONTEXT,
        )
        .expect("attach unlink and rename");
    let slots = tracer.inflight.take().expect("the in-flight map");

    for (call, renaming_while_held) in [("rename", true), ("linkat", false)] {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "inflight::held_call_in_another_process"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(HELD_CALL_DIR, &dir.path)
            .env(HELD_CALL, call)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the held call's process");
        let pid = child.id();
        // libtest starts the line ("test ... ") before the helper prints.
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = |want: &str| {
            lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|l| l.split_once(want).map(|(_, rest)| rest.to_owned()))
                .unwrap_or_else(|| panic!("the {call} process never printed {want:?}"))
        };
        let tid: u32 = next("held tid ").parse().expect("a tid");
        assert_eq!(
            slots.renaming(pid, tid),
            renaming_while_held,
            "a {call} held in the kernel (pid {pid}, tid {tid})"
        );
        assert!(!slots.renaming(pid + 1, tid), "another process's key");
        writeln!(child.stdin.as_mut().expect("stdin")).expect("release the call");
        next("finished");
        assert!(!slots.renaming(pid, tid), "the {call} is done");
        assert!(child.wait().expect("wait").success(), "the {call} process");
    }
}

const HELD_CALL_DIR: &str = "LINK_TRACE_TEST_HELD_CALL_DIR";
const HELD_CALL: &str = "LINK_TRACE_TEST_HELD_CALL";

/// Not a test of its own: the process the test above starts. It holds one
/// call (rename or linkat, HELD_CALL) in the kernel, prints its thread id,
/// and lets the call finish when a line comes on stdin.
#[test]
#[ignore = "a helper process of the_in_flight_map_shows_a_thread_inside_a_rename"]
fn held_call_in_another_process() {
    let (Some(dir), Ok(call)) = (std::env::var_os(HELD_CALL_DIR), std::env::var(HELD_CALL)) else {
        panic!("run by the_in_flight_map_shows_a_thread_inside_a_rename only");
    };
    let dir = Path::new(&dir);
    let blocked = match call.as_str() {
        "rename" => BlockedLink::start_call(
            "lt-held-mv",
            &dir.join("to-rename"),
            &dir.join("renamed"),
            HeldCall::Rename,
        ),
        _ => BlockedLink::start_call(
            "lt-held-ln",
            &dir.join("to-link"),
            &dir.join("linked"),
            HeldCall::Linkat,
        ),
    };
    println!("held tid {}", blocked.tid());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    blocked.finish();
    println!("finished");
}

fn churn_thread(comm: &str, i: usize, old: CString, new: CString) {
    std::thread::Builder::new()
        .name(comm.into())
        .spawn(move || link_and_unlink(&old, &new))
        .expect("spawn a churn thread")
        .join()
        .expect("churn thread")
        .unwrap_or_else(|e| panic!("thread {i}: {e}"));
}

fn link_and_unlink(src: &CString, new: &CString) -> Result<(), String> {
    // SAFETY: valid NUL-terminated strings for the duration of the calls.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            new.as_ptr(),
            0,
        )
    };
    if linked != 0 {
        return Err(format!("linkat: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::unlink(new.as_ptr()) } != 0 {
        return Err(format!("unlink: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Each of the `tasks` new names n0.. has exactly one link event and one
/// unlink record, the held call of thread `held_tid` its event, and the
/// final stats count no loss at all.
fn check_every_call_delivered(run: &Run, dir: &Path, tasks: usize, held_tid: u32) {
    run.assert_clean_exit();
    let stats = run.final_stats();
    let lost: Vec<String> = ["losses", "context_losses"]
        .iter()
        .flat_map(|kind| {
            stats[kind]
                .as_array()
                .expect("loss counts")
                .iter()
                .filter(|l| l["total"] != 0)
                .map(move |l| format!("{kind}: {} {}", l["reason"], l["total"]))
        })
        .collect();
    let held: Vec<&serde_json::Value> = run.events().filter(|e| e["tid"] == held_tid).collect();
    assert!(
        held.len() == 1 && held[0]["success"] == true,
        "the linkat held in flight during the churn (tid {held_tid}): expected one successful event, got {held:#?}; losses: {lost:?}"
    );
    let expected: HashSet<String> = (0..tasks)
        .map(|i| dir.join(format!("n{i}")).display().to_string())
        .collect();
    let linked = paths_of(run, "event", "newpath");
    let unlinked = paths_of(run, "context", "oldpath");
    let missing = |seen: &[String]| {
        let seen: HashSet<&String> = seen.iter().collect();
        expected.iter().filter(|p| !seen.contains(p)).count()
    };
    assert!(
        lost.is_empty() && missing(&linked) == 0 && missing(&unlinked) == 0,
        "{tasks} tasks: {} link events missing, {} unlink records missing; losses: {lost:?}",
        missing(&linked),
        missing(&unlinked),
    );
    assert_eq!(linked.len(), tasks, "one link event per task, no more");
    assert_eq!(unlinked.len(), tasks, "one unlink record per task, no more");
}

/// `field` of every record of `kind`.
fn paths_of(run: &Run, kind: &str, field: &str) -> Vec<String> {
    run.records
        .iter()
        .filter(|r| r["kind"] == kind)
        .filter_map(|r| r[field].as_str().map(str::to_owned))
        .collect()
}

/// A linkat held between its entry and its exit: its new path lies in a
/// page registered with userfaultfd, so the kernel, copying the path in,
/// waits until `finish` supplies the page.
struct BlockedLink {
    uffd: std::os::fd::OwnedFd,
    page: *mut libc::c_void,
    path: CString,
    thread: JoinHandle<(u32, Result<(), String>)>,
    /// The held thread's id, set before its call.
    tid: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// The call a BlockedLink holds, its new path read from the held page.
#[derive(Clone, Copy)]
enum HeldCall {
    Linkat,
    Rename,
}

// The ioctls of linux/userfaultfd.h (type 0xAA), in the asm-generic
// _IOWR encoding (x86-64, arm64, riscv): libc does not define them.
const fn uffd_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u64 = uffd_iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = uffd_iowr(0x00, 32);
const UFFDIO_COPY: u64 = uffd_iowr(0x03, 40);
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

impl BlockedLink {
    /// Starts a thread named `comm` whose linkat(src, new) is held in the
    /// kernel, and returns once the kernel waits on the page (the call's
    /// entry has run).
    fn start(comm: &str, src: &Path, new: &Path) -> BlockedLink {
        Self::start_call(comm, src, new, HeldCall::Linkat)
    }

    /// As `start`, for `call`.
    fn start_call(comm: &str, src: &Path, new: &Path, call: HeldCall) -> BlockedLink {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let page_size = 4096usize;
        // SAFETY: plain syscalls; every result is checked.
        let (uffd, page) = unsafe {
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32;
            assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
            let uffd = OwnedFd::from_raw_fd(fd);
            let mut api = [UFFD_API, 0, 0];
            assert_eq!(
                libc::ioctl(fd, UFFDIO_API as _, api.as_mut_ptr()),
                0,
                "UFFDIO_API: {}",
                std::io::Error::last_os_error()
            );
            let page = libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED, "mmap");
            let mut register = [
                page as u64,
                page_size as u64,
                UFFDIO_REGISTER_MODE_MISSING,
                0,
            ];
            assert_eq!(
                libc::ioctl(fd, UFFDIO_REGISTER as _, register.as_mut_ptr()),
                0,
                "UFFDIO_REGISTER: {}",
                std::io::Error::last_os_error()
            );
            (uffd, page)
        };
        let (old, path) = (cstr(src), cstr(new));
        let page_addr = page as usize;
        let held_tid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tid_slot = held_tid.clone();
        let thread = std::thread::Builder::new()
            .name(comm.into())
            .spawn(move || {
                let tid = crate::harness::gettid();
                tid_slot.store(tid, std::sync::atomic::Ordering::SeqCst);
                let new = page_addr as *const libc::c_char;
                // SAFETY: the new path is read from the registered page,
                // which holds a NUL-terminated path once supplied.
                let ret = unsafe {
                    match call {
                        HeldCall::Linkat => {
                            libc::linkat(libc::AT_FDCWD, old.as_ptr(), libc::AT_FDCWD, new, 0)
                        }
                        HeldCall::Rename => libc::rename(old.as_ptr(), new),
                    }
                };
                let result = if ret == 0 {
                    Ok(())
                } else {
                    Err(format!("held call: {}", std::io::Error::last_os_error()))
                };
                (tid, result)
            })
            .expect("spawn the held thread");
        // The fault message says the kernel is waiting inside the call.
        let mut poll = libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        assert_eq!(ready, 1, "the held linkat never faulted on its path page");
        let mut message = [0u8; 32];
        // SAFETY: reads one uffd_msg (32 bytes) into a buffer of that size.
        let read = unsafe { libc::read(uffd.as_raw_fd(), message.as_mut_ptr().cast(), 32) };
        assert_eq!(
            read,
            32,
            "uffd message: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(message[0], UFFD_EVENT_PAGEFAULT, "a page fault message");
        BlockedLink {
            uffd,
            page,
            path,
            thread,
            tid: held_tid,
        }
    }

    /// The held thread's id (set before it made the call).
    fn tid(&self) -> u32 {
        self.tid.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Supplies the page (the path), lets the call finish and returns the
    /// thread's id.
    fn finish(self) -> u32 {
        use std::os::fd::AsRawFd;
        let mut contents = vec![0u8; 4096];
        let bytes = self.path.as_bytes_with_nul();
        contents[..bytes.len()].copy_from_slice(bytes);
        let mut copy = [self.page as u64, contents.as_ptr() as u64, 4096, 0, 0];
        // SAFETY: copies our buffer into the registered page.
        let ret =
            unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY as _, copy.as_mut_ptr()) };
        assert_eq!(ret, 0, "UFFDIO_COPY: {}", std::io::Error::last_os_error());
        let (tid, result) = self.thread.join().expect("held thread");
        result.unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(self.page, 4096) };
        tid
    }
}
