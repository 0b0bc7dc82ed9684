//! Project tasks: `cargo xtask setup | build | run | test | bench`.
//!
//! Every step is idempotent, so the README's two commands work on a fresh
//! machine and cost little on a prepared one.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;

/// bpf-linker release known to build against the nightly toolchain's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

#[derive(Parser)]
#[command(name = "xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need: nightly rust-src, bpf-linker
    /// and rsyslog (the syslog tests run a real rsyslogd of their own).
    Setup,
    /// Set up, then build link-trace (release).
    Build,
    /// Set up, build, then run link-trace with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run formatting and lint checks and every test, the
    /// privileged ones included (they must not skip when run as root or in CI).
    Test,
    /// Set up, build, then measure what tracing costs (see README, Benchmarks).
    Bench {
        /// Alternating rounds per configuration (the medians need at least 5).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.task {
        Task::Setup => setup(),
        Task::Build => setup().and_then(|()| build()),
        Task::Run { args } => setup().and_then(|()| build()).and_then(|()| run(&args)),
        Task::Test => setup().and_then(|()| test()),
        Task::Bench { rounds } => setup()
            .and_then(|()| build())
            .and_then(|()| bench::bench(rounds)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// PATH with cargo's bin directory first, where `cargo install` puts bpf-linker.
fn path_with_cargo_bin() -> OsString {
    let mut dirs = vec![cargo_home().join("bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_default()
}

fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", path_with_cargo_bin())
        .current_dir(workspace_root());
    cmd
}

fn run_step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> anyhow::Result<()> {
    let toolchains = output_of(command("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        run_step(
            "install the nightly toolchain",
            command("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]),
        )?;
    }
    let components = output_of(command("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        run_step(
            "add rust-src to nightly (for -Z build-std=core)",
            command("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        )?;
    }
    let installed = output_of(command("bpf-linker").arg("--version")).unwrap_or_default();
    if !installed.contains(BPF_LINKER_VERSION) {
        install_bpf_linker()?;
    }
    ensure_rsyslog()
}

/// The syslog sink's tests start their own rsyslogd (own config, ports and
/// socket); the package is installed only when `rsyslogd` is missing, with
/// its service kept from starting: no system daemon is needed or wanted.
fn ensure_rsyslog() -> anyhow::Result<()> {
    let present = || Path::new(RSYSLOGD).exists();
    if present() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask: warning: rsyslogd is missing and only root can install it (apt-get install rsyslog); the syslog tests need it"
        );
        return Ok(());
    }
    // Debian asks /usr/sbin/policy-rc.d whether a package may start its
    // service; 101 means no. One is put in place for the install only if
    // the machine has none (container images usually do).
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask setup while it installs rsyslog\nexit 101\n",
        )
        .context("write /usr/sbin/policy-rc.d")?;
        fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let install = || {
        run_step(
            "install rsyslog (for the syslog sink's tests; its service is not started)",
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "rsyslog"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let result = install().or_else(|_| {
        run_step(
            "update the package lists",
            Command::new("apt-get").arg("update"),
        )
        .and_then(|()| install())
    });
    if own_policy {
        let _ = fs::remove_file(policy);
    }
    result?;
    if !present() {
        bail!("{RSYSLOGD} is still missing after apt-get install rsyslog");
    }
    let running: Vec<String> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| {
            fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "rsyslogd")
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if !running.is_empty() {
        eprintln!(
            "xtask: warning: an rsyslogd is running (pid {}); the tests do not use it",
            running.join(", ")
        );
    }
    Ok(())
}

/// No system LLVM matches bpf-linker here, so it is built against the
/// nightly toolchain's own libLLVM through a prefix holding one symlink.
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot = output_of(command("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .context("cannot find the nightly sysroot")?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("read {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so.22.1-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.22.1-rust-* in {}", sysroot_lib.display()))?;
    let prefix = workspace_root().join("target/llvm-prefix");
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))?;
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link)?;
    }
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("symlink {} -> {}", link.display(), libllvm.display()))?;
    run_step(
        &format!(
            "build bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM 22 (about a minute)"
        ),
        command("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("={BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", sysroot_lib.display()),
            ),
    )
}

fn build() -> anyhow::Result<()> {
    run_step(
        "build link-trace",
        command("cargo").args(["build", "--release", "--package", "link-trace"]),
    )
}

fn run(args: &[OsString]) -> anyhow::Result<()> {
    let binary = workspace_root().join("target/release/link-trace");
    let status = command(&binary.to_string_lossy())
        .args(args)
        .current_dir(env::current_dir().unwrap_or_else(|_| workspace_root()))
        .status()
        .with_context(|| format!("start {}", binary.display()))?;
    if !status.success() {
        bail!("link-trace exited with {status}");
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    let nightly = format!("+{NIGHTLY}");
    run_step(
        "check formatting",
        command("cargo").args(["fmt", "--all", "--check"]),
    )?;
    run_step(
        "clippy (userspace, xtask, common)",
        command("cargo").args([
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run_step(
        "clippy (eBPF programs)",
        command("cargo")
            .args([
                &nightly,
                "clippy",
                "--release",
                "--package",
                "link-trace-ebpf",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    let mut tests = command("cargo");
    tests.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "link-trace-ebpf",
    ]);
    // In CI and as root the privileged tests must run: a skip is a failure.
    if env::var_os("CI").is_some() || is_root() {
        tests.env("LINK_TRACE_REQUIRE_PRIVILEGED", "1");
    }
    run_step("run every test, privileged ones included", &mut tests)
}

fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}
