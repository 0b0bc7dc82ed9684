//! Starts the real tracer, collects its JSON stream and validates it.

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
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

pub struct Tracer {
    child: Child,
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<Vec<String>>,
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
        let mut child = cmd
            .args(args)
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
        let stderr = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with(READY_MARK) {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let mut tracer = Tracer {
            child,
            stdout,
            stderr,
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
        let records = lines
            .iter()
            .map(|line| {
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
            })
            .collect();
        Run {
            exit_code: status.code(),
            records,
            stderr,
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
