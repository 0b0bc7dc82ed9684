//! Starts the real tracer, collects its JSON stream and validates it.

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;

const READY_MARK: &str = "link-trace: tracing";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// True when the test may run. Skips with a message when not root, unless
/// LINK_TRACE_REQUIRE_PRIVILEGED is set (CI, `cargo xtask test` as root):
/// then a skip is a failure.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var_os("LINK_TRACE_REQUIRE_PRIVILEGED").is_some() {
        panic!("{test}: privileged tests must run here, but euid is {euid}, not 0");
    }
    eprintln!("SKIP {test}: needs root to load eBPF programs");
    false
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_link-trace")
}

pub fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/link-trace-event.schema.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    })
}

/// One output line as a record; panics unless it is one JSON object that
/// matches the JSON Schema.
pub fn record_from_line(line: &str) -> Value {
    let value: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
    let errors: Vec<String> = schema()
        .iter_errors(&value)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "record violates the JSON Schema: {errors:?}\n{line}"
    );
    value
}

pub struct Tracer {
    child: Child,
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<Vec<String>>,
    /// stderr lines as they arrive, for tests that wait for one.
    stderr_seen: Arc<Mutex<Vec<String>>>,
}

/// What one tracer run printed.
pub struct Run {
    pub exit_code: Option<i32>,
    pub records: Vec<Value>,
    pub stderr: Vec<String>,
}

impl Tracer {
    /// Starts `link-trace --json ARGS` and waits until it is attached.
    pub fn start(args: &[&str]) -> Tracer {
        Self::start_with(true, args)
    }

    pub fn start_with(json: bool, args: &[&str]) -> Tracer {
        let mut cmd = Command::new(binary());
        if json {
            cmd.arg("--json");
        }
        cmd.args(args);
        Self::start_command(cmd)
    }

    /// Starts `cmd` (which runs the tracer, perhaps through a wrapper that
    /// execs it) and waits until it is attached.
    pub fn start_command(mut cmd: Command) -> Tracer {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start link-trace");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let stdout = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&stderr_seen);
        let stderr = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with(READY_MARK) {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut seen) = seen.lock() {
                    seen.push(line.clone());
                }
                lines.push(line);
            }
            lines
        });
        let mut tracer = Tracer {
            child,
            stdout,
            stderr,
            stderr_seen,
        };
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            let _ = tracer.child.kill();
            let run = tracer.collect_raw();
            panic!(
                "link-trace did not attach within {START_TIMEOUT:?}; stderr: {:?}",
                run.1
            );
        }
        tracer
    }

    /// The pid of the started process (the tracer, once a wrapper has exec'd it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, waits for the drain and exit, and parses the stream;
    /// every record must match the JSON Schema and the exit must be clean.
    pub fn stop(self) -> Run {
        self.stop_with(libc::SIGTERM)
    }

    pub fn stop_with(mut self, signal: i32) -> Run {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().expect("wait for link-trace");
        let (lines, stderr) = self.collect_raw();
        assert!(
            !stderr.iter().any(|l| l.contains("panicked")),
            "link-trace panicked: {stderr:?}"
        );
        let records = lines.iter().map(|line| record_from_line(line)).collect();
        Run {
            exit_code: status.code(),
            records,
            stderr,
        }
    }

    /// Sends a signal and leaves the tracer running.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits until a stderr line contains `text` (at most `timeout`); the
    /// line, or None.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .stderr_seen
                .lock()
                .ok()
                .and_then(|seen| seen.iter().find(|l| l.contains(text)).cloned())
            {
                return Some(line);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn collect_raw(self) -> (Vec<String>, Vec<String>) {
        (
            self.stdout.join().expect("stdout reader"),
            self.stderr.join().expect("stderr reader"),
        )
    }

    pub fn stop_text(mut self) -> (Option<i32>, Vec<String>) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for link-trace");
        let (lines, _) = self.collect_raw();
        (status.code(), lines)
    }
}

impl Run {
    pub fn events(&self) -> impl Iterator<Item = &Value> {
        self.records.iter().filter(|r| r["kind"] == "event")
    }

    /// The one event whose newpath is `path`; panics if there are none or several.
    pub fn event_for(&self, path: &Path) -> &Value {
        let wanted = path.to_str().expect("test paths are UTF-8");
        let found: Vec<&Value> = self.events().filter(|e| e["newpath"] == wanted).collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one event with newpath {wanted:?}, got {found:#?}\nstderr: {:?}",
            self.stderr
        );
        found[0]
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Value> {
        self.records.iter().filter(|r| r["kind"] == "alert")
    }

    /// The alerts whose triggering events include `event`.
    pub fn alerts_of(&self, event: &Value) -> Vec<&Value> {
        self.alerts()
            .filter(|a| {
                a["event_seqs"]
                    .as_array()
                    .is_some_and(|seqs| seqs.contains(&event["seq"]))
            })
            .collect()
    }

    /// The stats record written at exit (the last one).
    pub fn final_stats(&self) -> &Value {
        self.records
            .iter()
            .rfind(|r| r["kind"] == "stats")
            .unwrap_or_else(|| panic!("no stats record at exit; stderr: {:?}", self.stderr))
    }

    pub fn assert_clean_exit(&self) {
        assert_eq!(
            self.exit_code,
            Some(0),
            "link-trace exit code; stderr: {:?}",
            self.stderr
        );
    }
}

/// A fresh directory per test, removed afterwards.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(base: &str, name: &str) -> TestDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(base).join(format!(
            "link-trace-test-{}-{unique}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, b"link-trace test data\n").expect("write test file");
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in test path")
}

/// Runs a raw syscall result through errno: Ok(()) or Err(errno).
pub fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The calling thread's comm, as the kernel reports it.
fn set_comm(name: &str) {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: PR_SET_NAME with a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Runs `body` with this thread named `comm` (a tracer filter of the
/// test's own), then restores its name.
pub fn with_comm<T>(comm: &str, body: impl FnOnce() -> T) -> T {
    let saved = thread_comm();
    set_comm(comm);
    let out = body();
    set_comm(&saved);
    out
}

/// A comm (15 bytes, all the kernel keeps) no other run shares: "lt", this
/// process's pid (unique among live processes) and the low bits of the
/// boot clock (apart across pid namespaces, where pids repeat).
pub fn unique_comm() -> String {
    let boot_ns = crate::harness_boot_ns();
    let comm = format!(
        "lt{:06x}{:07x}",
        std::process::id() & 0xff_ffff,
        boot_ns & 0xfff_ffff
    );
    assert_eq!(comm.len(), 15);
    comm
}

pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .expect("read comm")
        .trim_end_matches('\n')
        .to_owned()
}

pub fn my_pid() -> String {
    std::process::id().to_string()
}

/// Field-by-field comparison with a message naming the field.
pub fn expect_fields(event: &Value, expected: &[(&str, Value)]) {
    for (field, want) in expected {
        assert_eq!(&event[*field], want, "field {field:?} of event {event:#}");
    }
}

/// Fields every event from this test thread must carry.
pub fn caller_fields() -> Vec<(&'static str, Value)> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    vec![
        ("pid", std::process::id().into()),
        ("tid", gettid().into()),
        ("uid", uid.into()),
        ("gid", gid.into()),
        ("comm", thread_comm().into()),
    ]
}

// userfaultfd ABI (linux/userfaultfd.h), for the deterministic TOCTOU test.
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// The "Phantom" attack, made deterministic: links `real` to `dst` with
/// newpath on a page that is not there yet, so the kernel blocks in
/// userfaultfd while copying it; the fault handler rewrites oldpath to
/// `decoy` in that window, during the syscall, after the tracer's entry
/// read. The tracer (`link-trace --json ARGS`) runs around the call only.
/// Returns linkat's result and the tracer's run.
pub fn link_with_oldpath_swapped(
    real: &Path,
    decoy: &Path,
    dst: &Path,
    args: &[&str],
) -> (Result<(), String>, Run) {
    let page = 4096usize;
    // SAFETY: raw syscalls and mappings owned by this function; every
    // pointer passed stays valid for the duration of the call.
    unsafe {
        let uffd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32;
        assert!(
            uffd >= 0,
            "userfaultfd: {}",
            std::io::Error::last_os_error()
        );
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        assert_eq!(libc::ioctl(uffd, UFFDIO_API, &mut api), 0, "UFFDIO_API");
        let region = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(region, libc::MAP_FAILED);
        let mut register = UffdioRegister {
            start: region as u64,
            len: page as u64,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        assert_eq!(
            libc::ioctl(uffd, UFFDIO_REGISTER, &mut register),
            0,
            "UFFDIO_REGISTER"
        );

        // oldpath: a normal buffer, as long as the decoy so it can be rewritten in place.
        let mut old = real.as_os_str().as_bytes().to_vec();
        let decoy_bytes = decoy.as_os_str().as_bytes().to_vec();
        old.resize(old.len().max(decoy_bytes.len()), b'\0');
        old.push(0);
        let old_ptr = old.as_mut_ptr() as usize;
        let old_len = old.len();

        let mut new_page = vec![0u8; page];
        new_page[..dst.as_os_str().len()].copy_from_slice(dst.as_os_str().as_bytes());
        let region_addr = region as u64;
        let handler = std::thread::spawn(move || {
            let mut msg = [0u8; 32];
            let n = libc::read(uffd, msg.as_mut_ptr().cast(), msg.len());
            assert_eq!(n, 32, "one userfaultfd message");
            // The kernel has copied oldpath and now waits for newpath: swap
            // oldpath for the decoy in this window.
            let buf = std::slice::from_raw_parts_mut(old_ptr as *mut u8, old_len);
            buf.fill(0);
            buf[..decoy_bytes.len()].copy_from_slice(&decoy_bytes);
            let mut copy = UffdioCopy {
                dst: region_addr,
                src: new_page.as_ptr() as u64,
                len: page as u64,
                mode: 0,
                copy: 0,
            };
            assert_eq!(libc::ioctl(uffd, UFFDIO_COPY, &mut copy), 0, "UFFDIO_COPY");
        });

        let tracer = Tracer::start(args);
        let ret = libc::linkat(
            libc::AT_FDCWD,
            old.as_ptr().cast(),
            libc::AT_FDCWD,
            region.cast(),
            0,
        );
        let errno = std::io::Error::last_os_error();
        handler.join().expect("fault handler");
        let run = tracer.stop();
        libc::munmap(region, page);
        libc::close(uffd);
        let result = if ret == 0 {
            Ok(())
        } else {
            Err(errno.to_string())
        };
        (result, run)
    }
}

pub fn linkat(olddirfd: i32, old: &Path, newdirfd: i32, new: &Path, flags: i32) -> Result<(), i32> {
    let (old, new) = (cstr(old), cstr(new));
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    check(unsafe { libc::linkat(olddirfd, old.as_ptr(), newdirfd, new.as_ptr(), flags) })
}

/// A directory opened as a dirfd (O_DIRECTORY | O_RDONLY | O_CLOEXEC).
pub fn open_dir(path: &Path) -> i32 {
    let c = cstr(path);
    // SAFETY: valid path string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "open {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    fd
}

/// An unnamed file in `dir` (O_TMPFILE), open with `flags` and `mode`.
pub fn o_tmpfile(dir: &Path, flags: i32, mode: libc::c_uint) -> i32 {
    let c = cstr(dir);
    // SAFETY: valid path string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_TMPFILE | flags | libc::O_CLOEXEC, mode) };
    assert!(fd >= 0, "O_TMPFILE: {}", std::io::Error::last_os_error());
    fd
}

pub fn close(fd: i32) {
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
}
