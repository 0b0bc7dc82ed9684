//! `cargo xtask bench`: what link-trace costs the traced host.
//!
//! Run after setup and the release build. The machine is small and shared,
//! so every comparison is made side by side in one run: configurations
//! alternate round after round and the table reports medians and ratios.
//!
//! 1. linkat+unlink pairs (`bench-load pairs`) with no tracer, link-trace and
//!    bpftrace, alternating; link-trace's own losses are checked each round.
//! 2. getppid calls (`bench-load getppid`), a syscall nobody traces, in the
//!    same rounds.
//! 3. A 10 s flood from two generators with link-trace attached: every call
//!    made must be an event captured or a loss counted.
//! 4. In-kernel cost per program run from the kernel's BPF run-time stats.
//! 5. link-trace's resident set at the end of the flood, and its start-up.
//! 6. The userspace pipeline's throughput (criterion, `benches/pipeline.rs`).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    os::fd::{FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

use crate::{command, output_of, run_step, workspace_root};

/// link-trace prints this on stderr once its programs are attached.
const READY_MARK: &str = "link-trace: tracing";
/// ...and its exit summary contains this.
const SUMMARY_MARK: &str = "events captured";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
pub const MIN_ROUNDS: usize = 5;
/// Each timed load runs for about this long (calibrated with no tracer).
const LOAD_RUN: Duration = Duration::from_secs(1);
const FLOOD_SECONDS: u64 = 10;
const FLOOD_GENERATORS: usize = 2;
const LINK_PROGRAMS: [&str; 3] = ["link_enter", "linkat_enter", "link_exit"];
/// Rules that make link-trace capture unlink and rename: disabled in the
/// "context off" configuration, so that the alternating rounds measure what
/// the context capture costs on the same machine in the same minute.
const NO_CONTEXT_RULES: &str = "disable = [\"sticky-dir-name-churn\", \"link-race-retry\"]\n";
/// Processes that would skew a round if they ran beside it.
const FOREIGN: [&str; 3] = ["link-trace", "bpftrace", "bench-load"];
/// The peer: what a one-line bpftrace watch of linkat would print.
const BPFTRACE_SCRIPT: &str = r#"tracepoint:syscalls:sys_enter_linkat { printf("%d %s %s %s\n", pid, comm, str(args->oldname), str(args->newname)); }"#;
/// The figure the issue asks for: decode, event, the built-in rules, JSON.
const CRITERION_BENCH: &str = "pipeline/decode_event_rules_render_json";

// Targets from issue 5.
const PAIR_OVERHEAD_MAX: f64 = 1.10;
const GETPPID_OVERHEAD_MAX: f64 = 1.02;
const RSS_MAX_KIB: u64 = 32 * 1024;
const STARTUP_MAX: Duration = Duration::from_millis(200);
const PIPELINE_MIN_EVENTS_PER_S: f64 = 1e6;

pub fn bench(rounds: usize) -> anyhow::Result<()> {
    if rounds < MIN_ROUNDS {
        bail!("at least {MIN_ROUNDS} rounds are needed for a median, got {rounds}");
    }
    if output_of(Command::new("id").arg("-u")).is_none_or(|uid| uid.trim() != "0") {
        bail!("the benchmarks load eBPF programs and change a sysctl: run them as root");
    }
    ensure_tools()?;
    run_step(
        "build bench-load (release)",
        command("cargo").args(["build", "--release", "--package", "bench-load"]),
    )?;
    let machine = machine()?;
    let pipeline = pipeline_throughput()?;
    let load = Load::calibrate()?;
    let load_average_start = load_average();
    let rounds = alternate(&load, rounds)?;
    let (kernel, kernel_no_context, flood) = {
        let _stats = BpfStats::enable()?;
        let no_context = NoContextRules::create()?;
        (
            kernel_cost(&load, &[])?,
            kernel_cost(&load, &["--rules", no_context.arg()?])?,
            flood(&load)?,
        )
    };
    let report = Report {
        load_averages: [load_average_start, load_average()],
        machine,
        load,
        rounds,
        kernel,
        kernel_no_context,
        flood,
        pipeline,
    };
    print!("{}", report.table());
    Ok(())
}

fn ensure_tools() -> anyhow::Result<()> {
    let present = || {
        output_of(Command::new("bpftrace").arg("--version")).is_some()
            && output_of(Command::new("bpftool").arg("version")).is_some()
    };
    if present() {
        return Ok(());
    }
    let install = || {
        run_step(
            "install bpftrace and bpftool",
            Command::new("apt-get")
                .args(["install", "-y", "bpftrace", "bpftool"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        run_step(
            "update the package lists",
            Command::new("apt-get").arg("update"),
        )?;
        install()?;
    }
    if !present() {
        bail!("bpftrace and bpftool are still missing after apt-get install");
    }
    Ok(())
}

struct Machine {
    date: String,
    /// The link-trace sources measured: commit, and whether they differ from it.
    commit: String,
    kernel: String,
    cpu: String,
    cores: usize,
}

fn machine() -> anyhow::Result<Machine> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").context("read /proc/cpuinfo")?;
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map_or_else(
            || "unknown CPU".to_owned(),
            |(_, model)| model.trim().to_owned(),
        );
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let text = |cmd: &mut Command| output_of(cmd).map(|s| s.trim().to_owned());
    let sources = ["link-trace", "link-trace-common", "link-trace-ebpf"];
    let commit = text(command("git").args(["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let dirty = text(
        command("git")
            .args(["status", "--porcelain", "--"])
            .args(sources),
    )
    .is_none_or(|status| !status.is_empty());
    Ok(Machine {
        commit: if dirty {
            format!("{commit} with uncommitted changes")
        } else {
            commit
        },
        date: text(Command::new("date").args(["-u", "+%Y-%m-%d"])).context("run date")?,
        kernel: text(Command::new("uname").arg("-r")).context("run uname")?,
        cpu,
        cores,
    })
}

/// Events per second of the userspace pipeline, from criterion's estimate.
fn pipeline_throughput() -> anyhow::Result<f64> {
    run_step(
        "criterion: userspace pipeline (decode → event → rules → JSON)",
        command("cargo").args(["bench", "--package", "link-trace", "--bench", "pipeline"]),
    )?;
    let dir = workspace_root()
        .join("target/criterion")
        .join(CRITERION_BENCH)
        .join("new");
    let json = |name: &str| -> anyhow::Result<Value> {
        let path = dir.join(name);
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    };
    let elements = json("benchmark.json")?["throughput"]["Elements"]
        .as_f64()
        .context("criterion's benchmark.json has no element throughput")?;
    let estimates = json("estimates.json")?;
    // The figure criterion prints: the slope estimate, else the mean.
    let ns_per_iter = ["slope", "mean"]
        .iter()
        .find_map(|key| estimates[*key]["point_estimate"].as_f64())
        .context("criterion's estimates.json has no point estimate")?;
    Ok(elements / (ns_per_iter * 1e-9))
}

/// The load generator and the call counts that make one run last ~LOAD_RUN.
struct Load {
    binary: PathBuf,
    pairs: u64,
    getppids: u64,
}

/// One `bench-load` result line.
#[derive(Debug, Clone, Copy)]
struct LoadRun {
    calls: u64,
    failures: u64,
    ns_per_op: f64,
}

impl Load {
    fn calibrate() -> anyhow::Result<Self> {
        let mut load = Load {
            binary: workspace_root().join("target/release/bench-load"),
            pairs: 20_000,
            getppids: 1_000_000,
        };
        let pair = load.pairs()?;
        let getppid = load.getppid()?;
        let per_run = LOAD_RUN.as_nanos() as f64;
        load.pairs = ((per_run / pair.ns_per_op) as u64).clamp(20_000, 5_000_000);
        load.getppids = ((per_run / getppid.ns_per_op) as u64).clamp(1_000_000, 100_000_000);
        eprintln!(
            "xtask: calibrated: {} pairs ({:.0} ns/pair), {} getppid calls ({:.1} ns/call) per run",
            load.pairs, pair.ns_per_op, load.getppids, getppid.ns_per_op
        );
        Ok(load)
    }

    fn pairs(&self) -> anyhow::Result<LoadRun> {
        let run = self.run(&["pairs", &self.pairs.to_string()])?;
        if run.failures > 0 {
            bail!(
                "{} of {} linkat+unlink pairs failed",
                run.failures,
                run.calls
            );
        }
        Ok(run)
    }

    fn getppid(&self) -> anyhow::Result<LoadRun> {
        self.run(&["getppid", &self.getppids.to_string()])
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<LoadRun> {
        let child = self.spawn(args)?;
        finish_load(child)
    }

    fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))
    }
}

fn finish_load(child: Child) -> anyhow::Result<LoadRun> {
    let out = child.wait_with_output().context("wait for bench-load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("bench-load failed ({}): {text}", out.status);
    }
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| anyhow!("bench-load printed no {key}: {text:?}"))
    };
    Ok(LoadRun {
        calls: field("calls")?.parse()?,
        failures: field("failures")?.parse()?,
        ns_per_op: field("ns_per_op")?.parse()?,
    })
}

/// A tracer running as a child process, its stderr collected by a thread.
/// Dropped while still running (an error on the way), it is killed.
struct Tracer {
    child: Option<Child>,
    stderr: Option<JoinHandle<Vec<String>>>,
    /// From spawn to attached.
    startup: Duration,
}

/// link-trace's exit summary.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    captured: u64,
    written: u64,
    lost: u64,
    undelivered: u64,
}

impl Tracer {
    fn spawn(cmd: &mut Command, ready_mark: Option<&'static str>) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {:?}", cmd.get_program()))?;
        let stderr = child.stderr.take().context("tracer stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if ready_mark.is_some_and(|mark| line.starts_with(mark)) {
                    let _ = ready_tx.send(Instant::now());
                }
                lines.push(line);
            }
            lines
        });
        let mut tracer = Tracer {
            child: Some(child),
            stderr: Some(reader),
            startup: Duration::ZERO,
        };
        if ready_mark.is_some() {
            match ready_rx.recv_timeout(ATTACH_TIMEOUT) {
                Ok(at) => tracer.startup = at - started,
                Err(_) => {
                    let (status, lines) = tracer.stop(libc::SIGKILL)?;
                    bail!("the tracer did not attach ({status}); stderr: {lines:?}");
                }
            }
        }
        Ok(tracer)
    }

    fn link_trace(args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(
            Command::new(workspace_root().join("target/release/link-trace"))
                .arg("--json")
                .args(args),
            Some(READY_MARK),
        )
    }

    /// bpftrace v0.17 prints "Attaching 1 probe..." to its output (stdout,
    /// here /dev/null) *before* it attaches, so attachment is confirmed where
    /// the kernel shows it: a perf event of bpftrace's on sys_enter_linkat.
    fn bpftrace() -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut tracer = Self::spawn(Command::new("bpftrace").args(["-e", BPFTRACE_SCRIPT]), None)?;
        let pid = tracer.pid()?;
        while !bpftrace_attached(pid) {
            let exited = tracer.child.as_mut().map(Child::try_wait);
            if started.elapsed() > ATTACH_TIMEOUT || matches!(exited, Some(Ok(Some(_)))) {
                let (status, lines) = tracer.stop(libc::SIGKILL)?;
                bail!("bpftrace did not attach ({status}); stderr: {lines:?}");
            }
            thread::sleep(POLL);
        }
        tracer.startup = started.elapsed();
        Ok(tracer)
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("tracer already stopped")
    }

    /// Sends `signal`, waits (SIGKILL after EXIT_TIMEOUT) and returns the
    /// exit status and everything the tracer printed on stderr.
    fn stop(&mut self, signal: i32) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        let mut child = self.child.take().context("tracer already stopped")?;
        // SAFETY: kill(2) on our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the tracer did not exit within {EXIT_TIMEOUT:?} of signal {signal}");
            }
            thread::sleep(POLL);
        };
        Ok((status, self.stderr_lines()))
    }

    /// Everything the tracer printed on stderr; call once it has exited.
    fn stderr_lines(&mut self) -> Vec<String> {
        self.stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Fails, with the exit status and stderr, when the tracer is no longer
    /// running: it must stay attached for as long as the load runs.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        let child = self.child.as_mut().context("tracer already stopped")?;
        if let Some(status) = child.try_wait()? {
            self.child = None;
            let lines = self.stderr_lines();
            bail!(
                "the tracer exited while it should have been attached ({status}); stderr: {lines:?}"
            );
        }
        Ok(())
    }

    /// SIGTERM, a clean exit and link-trace's summary line.
    fn stop_link_trace(mut self) -> anyhow::Result<Summary> {
        let (status, lines) = self.stop(libc::SIGTERM)?;
        if status.code() != Some(0) {
            bail!("link-trace exited with {status} after SIGTERM; stderr: {lines:?}");
        }
        parse_summary(&lines)
            .with_context(|| format!("no summary line from link-trace; stderr: {lines:?}"))
    }

    fn stop_bpftrace(mut self) -> anyhow::Result<()> {
        let (status, lines) = self.stop(libc::SIGINT)?;
        if !status.success() {
            bail!("bpftrace exited with {status} after SIGINT; stderr: {lines:?}");
        }
        Ok(())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The exit summary: `link-trace: N events captured, N lost in the kernel
/// or decoder, N not handed to the outputs` and, for the stdout output,
/// `link-trace: output stdout: N events delivered, N dropped (queue full),
/// N dropped (output failed)…`. Undelivered: not handed on plus dropped.
fn parse_summary(lines: &[String]) -> Option<Summary> {
    let numbers = |line: &str| -> Vec<u64> {
        line.split(|c: char| !c.is_ascii_digit())
            .filter(|word| !word.is_empty())
            .filter_map(|word| word.parse().ok())
            .collect()
    };
    let totals = lines.iter().find(|line| line.contains(SUMMARY_MARK))?;
    let [captured, lost, not_handed] = numbers(totals)[..] else {
        return None;
    };
    let output = lines
        .iter()
        .find(|line| line.starts_with("link-trace: output stdout:"))?;
    let [delivered, dropped_full, dropped_failed, ..] = numbers(output)[..] else {
        return None;
    };
    Some(Summary {
        captured,
        written: delivered,
        lost,
        undelivered: not_handed + dropped_full + dropped_failed,
    })
}

fn bpftrace_attached(pid: u32) -> bool {
    let Some(json) = output_of(Command::new("bpftool").args(["perf", "show", "--json"])) else {
        return false;
    };
    let perf: Value = serde_json::from_str(&json).unwrap_or_default();
    perf.as_array().is_some_and(|entries| {
        entries.iter().any(|entry| {
            entry["pid"].as_u64() == Some(u64::from(pid))
                && entry["tracepoint"].as_str() == Some("sys_enter_linkat")
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    None,
    LinkTrace,
    /// link-trace with the rules that need unlink and rename disabled, so
    /// it captures link and linkat only.
    LinkTraceNoContext,
    Bpftrace,
}

const CONFIGS: [Config; 4] = [
    Config::None,
    Config::LinkTrace,
    Config::LinkTraceNoContext,
    Config::Bpftrace,
];

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::None => "no tracer",
            Config::LinkTrace => "link-trace --json > /dev/null",
            Config::LinkTraceNoContext => {
                "link-trace --json --rules no-context.toml > /dev/null (unlink/rename not captured)"
            }
            Config::Bpftrace => "bpftrace printf pid, comm, both paths > /dev/null",
        }
    }
}

/// A rule file that turns context capture off, removed when dropped.
struct NoContextRules(PathBuf);

impl NoContextRules {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "link-trace-bench-{}-no-context.toml",
            std::process::id()
        ));
        fs::write(&path, NO_CONTEXT_RULES).with_context(|| format!("write {}", path.display()))?;
        Ok(Self(path))
    }

    fn arg(&self) -> anyhow::Result<&str> {
        self.0.to_str().context("temporary path is not UTF-8")
    }
}

impl Drop for NoContextRules {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Per-configuration samples of the alternating rounds.
struct Rounds {
    count: usize,
    pairs: [Vec<f64>; CONFIGS.len()],
    getppid: [Vec<f64>; CONFIGS.len()],
    startups: Vec<Duration>,
    /// link-trace's summaries, summed over its rounds.
    link_trace: Summary,
    /// linkat calls bench-load made while link-trace was attached.
    link_trace_calls: u64,
    /// Runs that began with another tracer or generator on the machine, and
    /// which ones were seen.
    crowded_runs: usize,
    foreign: BTreeSet<String>,
}

fn alternate(load: &Load, count: usize) -> anyhow::Result<Rounds> {
    let mut rounds = Rounds {
        count,
        pairs: Default::default(),
        getppid: Default::default(),
        startups: Vec::new(),
        link_trace: Summary::default(),
        link_trace_calls: 0,
        crowded_runs: 0,
        foreign: BTreeSet::new(),
    };
    let no_context = NoContextRules::create()?;
    for round in 1..=count {
        for (index, config) in CONFIGS.into_iter().enumerate() {
            // None of ours runs between two runs: whatever is found is not ours.
            let foreign = foreign_processes();
            rounds.crowded_runs += usize::from(!foreign.is_empty());
            rounds.foreign.extend(foreign);
            let mut tracer = match config {
                Config::None => None,
                Config::LinkTrace => Some(Tracer::link_trace(&[])?),
                Config::LinkTraceNoContext => {
                    Some(Tracer::link_trace(&["--rules", no_context.arg()?])?)
                }
                Config::Bpftrace => Some(Tracer::bpftrace()?),
            };
            let pairs = load.pairs()?;
            let getppid = load.getppid()?;
            if let Some(tracer) = tracer.as_mut() {
                tracer.ensure_running()?;
            }
            let mut note = String::new();
            match tracer {
                Some(tracer) if config == Config::LinkTrace => {
                    rounds.startups.push(tracer.startup);
                    let summary = tracer.stop_link_trace()?;
                    note = format!(
                        "; link-trace: {} captured, {} lost, {} undelivered",
                        summary.captured, summary.lost, summary.undelivered
                    );
                    rounds.link_trace_calls += pairs.calls;
                    rounds.link_trace.captured += summary.captured;
                    rounds.link_trace.written += summary.written;
                    rounds.link_trace.lost += summary.lost;
                    rounds.link_trace.undelivered += summary.undelivered;
                }
                Some(tracer) if config == Config::LinkTraceNoContext => {
                    let summary = tracer.stop_link_trace()?;
                    note = format!(
                        "; link-trace (context off): {} captured, {} lost",
                        summary.captured, summary.lost
                    );
                }
                Some(tracer) => tracer.stop_bpftrace()?,
                None => {}
            }
            eprintln!(
                "xtask: round {round}/{count}, {}: {:.0} ns/pair, {:.1} ns/getppid{note}",
                config.label(),
                pairs.ns_per_op,
                getppid.ns_per_op
            );
            rounds.pairs[index].push(pairs.ns_per_op);
            rounds.getppid[index].push(getppid.ns_per_op);
        }
    }
    Ok(rounds)
}

/// Other tracers and load generators running now, by name, and tracing BPF
/// programs loaded now (called between runs, when none of ours is loaded).
fn foreign_processes() -> BTreeSet<String> {
    let mut found = tracing_programs();
    if !found.is_empty() {
        // Those of a tracer that just exited may take a moment to go.
        thread::sleep(Duration::from_millis(200));
        found = tracing_programs();
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    found.extend(
        entries
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|entry| fs::read_to_string(entry.path().join("comm")).ok())
            .map(|comm| comm.trim().to_owned())
            .filter(|comm| FOREIGN.contains(&comm.as_str()) || comm.starts_with("bl-")),
    );
    found
}

/// "BPF tracepoint program NAME" for every tracing program loaded now.
fn tracing_programs() -> BTreeSet<String> {
    const TRACING: [&str; 5] = [
        "tracepoint",
        "raw_tracepoint",
        "kprobe",
        "tracing",
        "perf_event",
    ];
    let progs = output_of(Command::new("bpftool").args(["prog", "show", "--json"]))
        .and_then(|json| serde_json::from_str::<Value>(&json).ok())
        .unwrap_or_default();
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|prog| {
            let kind = prog["type"].as_str()?;
            TRACING.contains(&kind).then(|| {
                let name = prog["name"].as_str().unwrap_or("(unnamed)");
                format!("BPF {kind} program {name}")
            })
        })
        .collect()
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| Some(text.split_whitespace().next()?.to_owned()))
        .unwrap_or_else(|| "?".into())
}

/// The kernel's BPF run-time statistics, on for as long as this lives.
///
/// This is what `sysctl kernel.bpf_stats_enabled=1` turns on, asked for with
/// `bpf(BPF_ENABLE_STATS)` instead: the kernel counts that request apart from
/// the sysctl and ends it when the fd closes, so nobody else writing the
/// sysctl during the run can switch the stats off under the measurement, and
/// the sysctl is never left changed (not even when the bench is killed).
struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // `union bpf_attr`'s enable_stats member: one u32, the stats type.
        let attr = BPF_STATS_RUN_TIME;
        // SAFETY: bpf(2) reads `size` bytes of attr, which outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const u32,
                std::mem::size_of::<u32>() as libc::c_uint,
            )
        };
        let fd = i32::try_from(fd).unwrap_or(-1);
        if fd < 0 {
            bail!(
                "bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME): {}",
                std::io::Error::last_os_error()
            );
        }
        eprintln!("xtask: BPF run-time stats on (bpf(BPF_ENABLE_STATS))");
        // SAFETY: a new fd that nothing else owns.
        Ok(Self {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// Run-time statistics of one of link-trace's programs.
#[derive(Debug, Clone, Default)]
struct ProgStats {
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
}

impl ProgStats {
    fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// The statistics of the programs the process `pid` holds: their ids come
/// from its fds, so another link-trace on the machine is not mixed in.
fn program_stats(pid: u32) -> anyhow::Result<Vec<ProgStats>> {
    let fdinfo = PathBuf::from(format!("/proc/{pid}/fdinfo"));
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(&fdinfo).with_context(|| format!("read {}", fdinfo.display()))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(text.lines().filter_map(|line| {
            line.strip_prefix("prog_id:")
                .and_then(|id| id.trim().parse::<u64>().ok())
        }));
    }
    let json = output_of(Command::new("bpftool").args(["prog", "show", "--json"]))
        .context("bpftool prog show failed")?;
    let progs: Value = serde_json::from_str(&json).context("parse bpftool prog show")?;
    let stats: Vec<ProgStats> = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|prog| prog["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|prog| {
            Some(ProgStats {
                name: prog["name"].as_str()?.to_owned(),
                run_cnt: prog["run_cnt"].as_u64().unwrap_or(0),
                run_time_ns: prog["run_time_ns"].as_u64().unwrap_or(0),
            })
        })
        .collect();
    if !LINK_PROGRAMS
        .iter()
        .all(|name| stats.iter().any(|p| p.name == *name))
    {
        let listed = progs.as_array().map_or(0, Vec::len);
        bail!(
            "expected link-trace's {LINK_PROGRAMS:?} among its programs (ids {ids:?} in \
             {}; bpftool listed {listed} programs), found {stats:?}",
            fdinfo.display()
        );
    }
    Ok(stats)
}

/// In-kernel cost of one linkat event: entry plus exit program (the exit
/// program's runs include the unlink exits when unlink is captured).
fn ns_per_event(stats: &[ProgStats]) -> Option<f64> {
    let per_run = |name: &str| stats.iter().find(|p| p.name == name)?.ns_per_run();
    Some(per_run("linkat_enter")? + per_run("link_exit")?)
}

/// In-kernel cost of one linkat+unlink pair: every program of link-trace's.
fn ns_per_pair(stats: &[ProgStats], pairs: u64) -> Option<f64> {
    let total: u64 = stats.iter().map(|p| p.run_time_ns).sum();
    (pairs > 0).then(|| total as f64 / pairs as f64)
}

/// One link-trace run (default configuration plus `args`, stats on) under
/// one generator; its programs' statistics and the pairs made.
fn kernel_cost(load: &Load, args: &[&str]) -> anyhow::Result<(Vec<ProgStats>, u64)> {
    let mut tracer = Tracer::link_trace(args)?;
    let pairs = load.pairs()?;
    tracer.ensure_running()?;
    let stats = program_stats(tracer.pid()?)?;
    let summary = tracer.stop_link_trace()?;
    eprintln!("xtask: bpf_stats run: {stats:?}; {summary:?}");
    Ok((stats, pairs.calls))
}

/// The flood generators' comm: `bl-` and this process's id.
fn flood_comm() -> String {
    format!("bl-{}", std::process::id())
}

struct Flood {
    /// Other tracers and generators running when the flood began.
    foreign: BTreeSet<String>,
    calls: u64,
    summary: Summary,
    vm_hwm_kib: u64,
    vm_rss_kib: u64,
    stats: Vec<ProgStats>,
}

fn flood(load: &Load) -> anyhow::Result<Flood> {
    // Only the generators are traced, under a name of this run's own, so
    // that link calls of anything else on a shared machine (another bench
    // included) stay out of the accounting.
    let comm = flood_comm();
    let foreign = foreign_processes();
    let mut tracer = Tracer::link_trace(&["--comm", &comm])?;
    let seconds = FLOOD_SECONDS.to_string();
    eprintln!(
        "xtask: flood: {FLOOD_GENERATORS} generators for {FLOOD_SECONDS} s, link-trace --comm {comm}"
    );
    let generators = (0..FLOOD_GENERATORS)
        .map(|_| load.spawn(&["--comm", &comm, "flood", &seconds]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut calls = 0;
    for generator in generators {
        let run = finish_load(generator)?;
        calls += run.calls;
    }
    tracer.ensure_running()?;
    let pid = tracer.pid()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    let (vm_hwm_kib, vm_rss_kib) = (kib("VmHWM:")?, kib("VmRSS:")?);
    let stats = program_stats(pid)?;
    let summary = tracer.stop_link_trace()?;
    eprintln!("xtask: flood: {calls} calls; {summary:?}");
    Ok(Flood {
        foreign,
        calls,
        summary,
        vm_hwm_kib,
        vm_rss_kib,
        stats,
    })
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn spread(samples: &[f64]) -> (f64, f64) {
    samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

struct Report {
    /// 1-minute load average before the rounds and at the end.
    load_averages: [String; 2],
    machine: Machine,
    load: Load,
    rounds: Rounds,
    kernel: (Vec<ProgStats>, u64),
    /// The same with unlink and rename not captured.
    kernel_no_context: (Vec<ProgStats>, u64),
    flood: Flood,
    pipeline: f64,
}

impl Report {
    /// The results as a Markdown table, ready for the README.
    fn table(&self) -> String {
        let m = &self.machine;
        let r = &self.rounds;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nlink-trace benchmarks, {} (link-trace {}); machine: Linux {}, {}, {} cores\n",
            m.date, m.commit, m.kernel, m.cpu, m.cores
        );
        let _ = writeln!(
            out,
            "{} alternating rounds of {} linkat+unlink pairs and {} getppid calls per configuration; medians (min–max)\n",
            r.count, self.load.pairs, self.load.getppids
        );
        let seen = |names: &BTreeSet<String>| names.iter().cloned().collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "Load average (1 min): {} before the rounds, {} at the end. Other tracers, load generators or tracing BPF programs present at the start of {} of {} runs{}{}; at the start of the flood: {}.\n",
            self.load_averages[0],
            self.load_averages[1],
            r.crowded_runs,
            r.count * CONFIGS.len(),
            if r.foreign.is_empty() { "" } else { ": " },
            seen(&r.foreign),
            if self.flood.foreign.is_empty() {
                "none".to_owned()
            } else {
                seen(&self.flood.foreign)
            },
        );
        let _ = writeln!(
            out,
            "| configuration | median | ratio vs none | target | met? |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        let mut row = |config: &str, value: String, ratio: String, target: &str, ok: &str| {
            let _ = writeln!(out, "| {config} | {value} | {ratio} | {target} | {ok} |");
        };
        for (what, samples, unit, target) in [
            ("linkat+unlink pair", &r.pairs, "ns/pair", PAIR_OVERHEAD_MAX),
            ("getppid", &r.getppid, "ns/call", GETPPID_OVERHEAD_MAX),
        ] {
            let none = median(&samples[0]);
            for (config, samples) in CONFIGS.iter().zip(samples) {
                let value = median(samples);
                let (lo, hi) = spread(samples);
                let ratio = value / none;
                let (target, ok) = match config {
                    Config::None => (String::new(), ""),
                    Config::LinkTrace => (format!("≤ {target:.2}×"), met(ratio <= target)),
                    Config::LinkTraceNoContext => (String::new(), "context capture's share"),
                    Config::Bpftrace if what == "linkat+unlink pair" => {
                        ("~3× (the issue's figure for the peer)".into(), "reference")
                    }
                    Config::Bpftrace => (String::new(), "reference"),
                };
                row(
                    &format!("{what}, {}", config.label()),
                    format!("{value:.1} {unit} ({lo:.1}–{hi:.1})"),
                    format!("{ratio:.3}×"),
                    &target,
                    ok,
                );
            }
        }
        let lt = &r.link_trace;
        row(
            &format!("link-trace losses over its {} pair rounds", r.count),
            format!(
                "{} lost, {} undelivered; {} captured for {} bench-load calls",
                lt.lost, lt.undelivered, lt.captured, r.link_trace_calls
            ),
            String::new(),
            "0 lost",
            met(lt.lost == 0 && lt.undelivered == 0),
        );
        let f = &self.flood;
        let s = &f.summary;
        let balanced = f.calls == s.captured + s.lost;
        row(
            &format!(
                "flood: {FLOOD_GENERATORS} generators × {FLOOD_SECONDS} s, link-trace --comm {}, default ring",
                flood_comm()
            ),
            format!(
                "{} calls made; {} captured + {} lost = {} ({}); {} written, {} undelivered",
                f.calls,
                s.captured,
                s.lost,
                s.captured + s.lost,
                if balanced { "equal" } else { "NOT equal" },
                s.written,
                s.undelivered
            ),
            String::new(),
            "0 lost, calls = captured + lost",
            met(balanced && s.lost == 0 && s.undelivered == 0),
        );
        let context_share =
            |samples: &[Vec<f64>; CONFIGS.len()]| median(&samples[1]) / median(&samples[2]);
        row(
            "cost of capturing unlink/rename as context: link-trace default ÷ context off, pair | getppid",
            format!(
                "{:.3}× | {:.3}×",
                context_share(&r.pairs),
                context_share(&r.getppid)
            ),
            String::new(),
            "",
            "",
        );
        for (label, stats, pairs) in [
            ("one generator", &self.kernel.0, self.kernel.1),
            (
                "one generator, unlink/rename not captured",
                &self.kernel_no_context.0,
                self.kernel_no_context.1,
            ),
            ("flood", &self.flood.stats, self.flood.calls),
        ] {
            let mut runs: Vec<String> = stats
                .iter()
                .filter_map(|p| Some(format!("{} {:.0}", p.name, p.ns_per_run()?)))
                .collect();
            runs.sort();
            row(
                &format!("in-kernel cost ({label}), BPF run-time stats"),
                format!(
                    "{} ns/event (linkat_enter+link_exit); {} ns/pair (all programs); ns/run: {}",
                    ns_per_event(stats).map_or_else(|| "n/a".into(), |ns| format!("{ns:.0}")),
                    ns_per_pair(stats, pairs).map_or_else(|| "n/a".into(), |ns| format!("{ns:.0}")),
                    runs.join(", ")
                ),
                String::new(),
                "",
                "",
            );
        }
        for (key, kib) in [("VmHWM", f.vm_hwm_kib), ("VmRSS", f.vm_rss_kib)] {
            row(
                &format!("link-trace {key} at the end of the flood"),
                format!("{:.1} MiB", kib as f64 / 1024.0),
                String::new(),
                "≤ 32 MiB",
                met(kib <= RSS_MAX_KIB),
            );
        }
        let startups: Vec<f64> = r.startups.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let startup = median(&startups);
        let (lo, hi) = spread(&startups);
        row(
            &format!(
                "link-trace start-up, spawn → \"{READY_MARK}\" (median of {})",
                startups.len()
            ),
            format!("{startup:.1} ms ({lo:.1}–{hi:.1})"),
            String::new(),
            "< 200 ms",
            met(startup < STARTUP_MAX.as_secs_f64() * 1e3),
        );
        row(
            "userspace pipeline decode → event → built-in rules → JSON, one core (criterion)",
            format!("{:.2} M events/s", self.pipeline / 1e6),
            String::new(),
            "≥ 1 M events/s",
            met(self.pipeline >= PIPELINE_MIN_EVENTS_PER_S),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let lines = [
            "link-trace: tracing".to_string(),
            "link-trace: 12 events captured, 3 lost in the kernel or decoder, 1 not handed to the outputs".into(),
            "link-trace: output stdout: 9 events delivered, 2 dropped (queue full), 0 dropped (output failed)".into(),
        ];
        let s = parse_summary(&lines).unwrap();
        assert_eq!(
            (s.captured, s.written, s.lost, s.undelivered),
            (12, 9, 3, 3)
        );
        assert!(parse_summary(&lines[..2]).is_none());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
