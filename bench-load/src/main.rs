//! Load generator for `cargo xtask bench`.
//!
//! ```text
//! bench-load [--comm NAME] pairs COUNT [DIR]     linkat(src, dst) then unlink(dst), COUNT times
//! bench-load [--comm NAME] getppid COUNT         getppid(), COUNT times (a syscall link-trace does not trace)
//! bench-load [--comm NAME] flood SECONDS [DIR]   linkat+unlink pairs as fast as possible for SECONDS
//! ```
//!
//! `--comm NAME` renames the process (its comm, at most 15 bytes) before the
//! loop, so that a tracer can select this generator's calls by name.
//!
//! The link work happens in a fresh directory of its own under DIR (default
//! /dev/shm, a tmpfs), removed at the end. Every run prints one line on
//! stdout, `bench-load: op=… calls=… failures=… elapsed_ns=… ns_per_op=…`,
//! where `calls` counts the linkat (or getppid) calls made, failed or not.
//! Every loop is bounded in count and in time.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::DirBuilderExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// No run goes on longer than this, whatever COUNT asks.
const MAX_RUN: Duration = Duration::from_secs(120);
/// No loop makes more calls than this, whatever SECONDS asks.
const MAX_CALLS: u64 = 1 << 34;
/// The clock is read once per this many iterations.
const CLOCK_EVERY: u64 = 1024;
const DEFAULT_DIR: &str = "/dev/shm";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("bench-load: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What one loop did.
struct Report {
    op: &'static str,
    calls: u64,
    failures: u64,
    elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = self.elapsed.as_nanos();
        let per_op = if self.calls == 0 {
            0.0
        } else {
            ns as f64 / self.calls as f64
        };
        write!(
            f,
            "bench-load: op={} calls={} failures={} elapsed_ns={ns} ns_per_op={per_op:.2}",
            self.op, self.calls, self.failures
        )
    }
}

fn run(args: &[String]) -> Result<Report, String> {
    let usage =
        "usage: bench-load [--comm NAME] pairs COUNT [DIR] | getppid COUNT | flood SECONDS [DIR]";
    let args = match args {
        [flag, name, rest @ ..] if flag == "--comm" => {
            set_comm(name)?;
            rest
        }
        _ => args,
    };
    let (op, number, dir) = match args {
        [op, number] => (op.as_str(), number, DEFAULT_DIR),
        [op, number, dir] if op != "getppid" => (op.as_str(), number, dir.as_str()),
        _ => return Err(usage.into()),
    };
    let number: u64 = number
        .parse()
        .map_err(|e| format!("{number:?} is not a count: {e}"))?;
    match op {
        "pairs" => with_link_dir(Path::new(dir), |pair| {
            Ok(pairs(pair, "pairs", number.min(MAX_CALLS), MAX_RUN))
        }),
        "flood" => {
            let seconds = Duration::from_secs(number).min(MAX_RUN);
            with_link_dir(Path::new(dir), |pair| {
                Ok(pairs(pair, "flood", MAX_CALLS, seconds))
            })
        }
        "getppid" => Ok(getppid(number.min(MAX_CALLS))),
        _ => Err(usage.into()),
    }
}

/// Renames the calling thread, the only one: its comm is what tracers see.
fn set_comm(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("--comm {name:?}: a comm has 1 to 15 bytes"));
    }
    let name = CString::new(name).map_err(|e| format!("--comm {name:?}: {e}"))?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
        return Err(format!(
            "prctl(PR_SET_NAME): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The source file and the name the loop links it to.
struct LinkPair {
    src: CString,
    dst: CString,
}

/// Makes a fresh directory under `base` holding a source file, runs `body`,
/// then removes the directory whatever `body` returned.
fn with_link_dir(
    base: &Path,
    body: impl FnOnce(&LinkPair) -> Result<Report, String>,
) -> Result<Report, String> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = base.join(format!("bench-load-{}-{stamp}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let result = prepare(&dir).and_then(|pair| body(&pair));
    let removed = fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()));
    let report = result?;
    removed?;
    Ok(report)
}

fn prepare(dir: &Path) -> Result<LinkPair, String> {
    let src = dir.join("src");
    fs::write(&src, b"link-trace bench\n").map_err(|e| format!("create {}: {e}", src.display()))?;
    Ok(LinkPair {
        src: c_path(src)?,
        dst: c_path(dir.join("dst"))?,
    })
}

fn c_path(path: PathBuf) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// linkat(AT_FDCWD, src, AT_FDCWD, dst, 0) then unlink(dst), until `max_calls`
/// linkat calls were made or `max_time` passed.
fn pairs(pair: &LinkPair, op: &'static str, max_calls: u64, max_time: Duration) -> Report {
    let mut failures = 0u64;
    let start = Instant::now();
    let mut calls = 0u64;
    while calls < max_calls {
        // SAFETY: both paths are NUL-terminated strings that outlive the calls.
        let linked = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                pair.src.as_ptr(),
                libc::AT_FDCWD,
                pair.dst.as_ptr(),
                0,
            )
        };
        // SAFETY: as above.
        let unlinked = unsafe { libc::unlink(pair.dst.as_ptr()) };
        calls += 1;
        failures += u64::from(linked != 0 || unlinked != 0);
        if calls.is_multiple_of(CLOCK_EVERY) && start.elapsed() >= max_time {
            break;
        }
    }
    Report {
        op,
        calls,
        failures,
        elapsed: start.elapsed(),
    }
}

/// getppid() `count` times, or until MAX_RUN passed.
fn getppid(count: u64) -> Report {
    let start = Instant::now();
    let mut calls = 0u64;
    while calls < count {
        // SAFETY: getppid has no preconditions and cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
        calls += 1;
        if calls.is_multiple_of(CLOCK_EVERY) && start.elapsed() >= MAX_RUN {
            break;
        }
    }
    Report {
        op: "getppid",
        calls,
        failures: 0,
        elapsed: start.elapsed(),
    }
}
