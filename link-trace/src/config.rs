//! Settings: the configuration file (TOML, default `/etc/link-trace/config.toml`
//! or `--config PATH`) merged with the command line. Every top-level key is
//! also a flag of the same name (`stats_interval` ↔ `--stats-interval`); a
//! flag given on the command line wins over the file.
//!
//! Unknown keys and bad values are errors that name the line: the file is
//! deserialized with `deny_unknown_fields` and every value check runs inside
//! deserialization, so the TOML parser attaches the span.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use link_trace_common::{DEFAULT_RING_BYTES, FILTER_MAX_ENTRIES, TASK_COMM_LEN};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::{
    cli::{Cli, RuleArgs},
    rules::RULES_DIR,
    sink::syslog,
};

pub const DEFAULT_CONFIG: &str = "/etc/link-trace/config.toml";
/// Records a sink may hold before it starts dropping (and counting) them.
pub const DEFAULT_QUEUE: usize = 4096;
pub const DEFAULT_STATS_INTERVAL: u64 = 60;
/// nice -5 (auditd's priority_boost defaults to 4): enough for the
/// consumer to keep up with two generators flooding links (cargo xtask
/// bench's flood loses events at nice 0 on two cores, none at -5).
pub const DEFAULT_PRIORITY_BOOST: u8 = 5;
pub const MAX_PRIORITY_BOOST: u8 = 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML error text carries the line, the column and the offending text.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The configuration file. Keys are the long flag names with `_` for `-`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub json: Option<bool>,
    pub pid: Option<Vec<u32>>,
    pub uid: Option<Vec<u32>>,
    #[serde(default, deserialize_with = "de_comms")]
    pub comm: Option<Vec<[u8; TASK_COMM_LEN]>>,
    pub stats_interval: Option<u64>,
    pub priority_boost: Option<u8>,
    #[serde(default, deserialize_with = "de_ring_bytes")]
    pub ring_bytes: Option<u32>,
    pub alerts_only: Option<bool>,
    pub rules: Option<Vec<PathBuf>>,
    pub no_builtin_rules: Option<bool>,
    pub rules_dir: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub keep_capabilities: Option<bool>,
    pub context_events: Option<bool>,
    pub metrics_allow_remote: Option<bool>,
    /// `[[output]]` tables; `--output` flags replace them all.
    output: Option<Vec<RawOutput>>,
    /// The `[[output]]` tables, checked.
    #[serde(skip)]
    pub outputs: Option<Vec<OutputConfig>>,
}

/// One output: where records go, in which format, behind its own queue.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputConfig {
    Stdout(StdoutOutput),
    File(FileOutput),
    Unix(UnixOutput),
    Syslog(SyslogOutput),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputType {
    Stdout,
    File,
    Unix,
    Syslog,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// link-trace's own JSON lines (schema/link-trace-event.schema.json).
    #[default]
    Json,
    /// One readable line per record.
    Text,
    /// Elastic Common Schema documents (see `formats::ecs`).
    Ecs,
    /// OCSF events (see `formats::ocsf`).
    Ocsf,
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputFormat::Json => "json",
            OutputFormat::Text => "text",
            OutputFormat::Ecs => "ecs",
            OutputFormat::Ocsf => "ocsf",
        })
    }
}

/// Fields every output has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Common {
    pub format: OutputFormat,
    pub queue: usize,
    pub alerts_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StdoutOutput {
    pub format: OutputFormat,
    pub queue: usize,
    pub alerts_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileOutput {
    pub path: PathBuf,
    pub format: OutputFormat,
    pub queue: usize,
    pub alerts_only: bool,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept besides the live one.
    pub keep: usize,
    pub fsync: FsyncPolicy,
}

/// When a file sink asks the kernel to put its data on disk.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After every batch written (at most one batch of events at risk
    /// in a power loss; costs one fsync per batch).
    Batch,
    /// Before each rotation and at exit.
    #[default]
    Rotate,
    /// Never: the kernel writes back when it wants.
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnixOutput {
    pub path: PathBuf,
    pub format: OutputFormat,
    pub queue: usize,
    pub alerts_only: bool,
    /// Socket file permissions.
    pub mode: u32,
    /// Bytes a subscriber may fall behind before it is disconnected.
    pub subscriber_buffer: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyslogOutput {
    pub transport: SyslogTransport,
    /// `host:port` for udp and tcp, a socket path for unix.
    pub address: String,
    pub format: OutputFormat,
    pub queue: usize,
    pub alerts_only: bool,
    /// RFC 5424 facility name (auth, authpriv, daemon, local0 … local7, …).
    pub facility: String,
    pub app_name: String,
    /// Longer messages are cut (at a UTF-8 boundary) and marked as cut.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    #[default]
    Unix,
    Udp,
    Tcp,
}

/// An `[[output]]` table as written. Every value keeps its span so that a
/// check across keys (a key the output type does not take, a missing path)
/// can still name the line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    #[serde(rename = "type")]
    kind: Spanned<OutputType>,
    format: Option<Spanned<OutputFormat>>,
    queue: Option<Spanned<i64>>,
    alerts_only: Option<Spanned<bool>>,
    path: Option<Spanned<PathBuf>>,
    max_bytes: Option<Spanned<i64>>,
    keep: Option<Spanned<i64>>,
    fsync: Option<Spanned<FsyncPolicy>>,
    mode: Option<Spanned<String>>,
    subscriber_buffer: Option<Spanned<i64>>,
    transport: Option<Spanned<SyslogTransport>>,
    address: Option<Spanned<String>>,
    facility: Option<Spanned<String>>,
    app_name: Option<Spanned<String>>,
    max_message_bytes: Option<Spanned<i64>>,
}

/// A problem with one value: its place in the text and what is wrong.
type SpanError = (std::ops::Range<usize>, String);

fn value<T: Clone>(field: &Option<Spanned<T>>) -> Option<T> {
    field.as_ref().map(|v| v.get_ref().clone())
}

impl RawOutput {
    fn check(self) -> Result<OutputConfig, SpanError> {
        let kind = *self.kind.get_ref();
        let table = self.kind.span();
        // Keys each output type takes besides the common ones.
        let takes: &[&str] = match kind {
            OutputType::Stdout => &[],
            OutputType::File => &["path", "max_bytes", "keep", "fsync"],
            OutputType::Unix => &["path", "mode", "subscriber_buffer"],
            OutputType::Syslog => &[
                "transport",
                "address",
                "facility",
                "app_name",
                "max_message_bytes",
            ],
        };
        for (name, span) in [
            ("path", self.path.as_ref().map(Spanned::span)),
            ("max_bytes", self.max_bytes.as_ref().map(Spanned::span)),
            ("keep", self.keep.as_ref().map(Spanned::span)),
            ("fsync", self.fsync.as_ref().map(Spanned::span)),
            ("mode", self.mode.as_ref().map(Spanned::span)),
            (
                "subscriber_buffer",
                self.subscriber_buffer.as_ref().map(Spanned::span),
            ),
            ("transport", self.transport.as_ref().map(Spanned::span)),
            ("address", self.address.as_ref().map(Spanned::span)),
            ("facility", self.facility.as_ref().map(Spanned::span)),
            ("app_name", self.app_name.as_ref().map(Spanned::span)),
            (
                "max_message_bytes",
                self.max_message_bytes.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span
                && !takes.contains(&name)
            {
                return Err((
                    span,
                    format!("{name} is not an option of a {kind:?} output"),
                ));
            }
        }
        let format = value(&self.format).unwrap_or_default();
        let alerts_only = value(&self.alerts_only).unwrap_or(false);
        let queue = match &self.queue {
            None => DEFAULT_QUEUE,
            Some(q) => usize::try_from(*q.get_ref())
                .ok()
                .filter(|q| (1..=1 << 20).contains(q))
                .ok_or((
                    q.span(),
                    "queue must be between 1 and 1048576 records".into(),
                ))?,
        };
        let path = || {
            value(&self.path)
                .filter(|p| !p.as_os_str().is_empty())
                .ok_or((table.clone(), format!("a {kind:?} output needs a path")))
        };
        Ok(match kind {
            OutputType::Stdout => OutputConfig::Stdout(StdoutOutput {
                format,
                queue,
                alerts_only,
            }),
            OutputType::File => OutputConfig::File(FileOutput {
                path: path()?,
                format,
                queue,
                alerts_only,
                max_bytes: match &self.max_bytes {
                    None => default_max_bytes(),
                    Some(m) => u64::try_from(*m.get_ref())
                        .ok()
                        .filter(|m| *m >= 4096)
                        .ok_or((m.span(), "max_bytes must be at least 4096".into()))?,
                },
                keep: match &self.keep {
                    None => default_keep(),
                    Some(k) => usize::try_from(*k.get_ref())
                        .ok()
                        .filter(|k| *k <= 1000)
                        .ok_or((k.span(), "keep must be between 0 and 1000".into()))?,
                },
                fsync: value(&self.fsync).unwrap_or_default(),
            }),
            OutputType::Unix => OutputConfig::Unix(UnixOutput {
                path: path()?,
                format,
                queue,
                alerts_only,
                mode: match &self.mode {
                    None => default_socket_mode(),
                    Some(m) => u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|mode| *mode <= 0o777)
                        .ok_or((m.span(), "mode is an octal string such as \"0600\"".into()))?,
                },
                subscriber_buffer: match &self.subscriber_buffer {
                    None => default_subscriber_buffer(),
                    Some(b) => usize::try_from(*b.get_ref())
                        .ok()
                        .filter(|b| (MIN_SUBSCRIBER_BUFFER..=1 << 30).contains(b))
                        .ok_or((
                            b.span(),
                            "subscriber_buffer must be between 262144 and 1073741824 bytes".into(),
                        ))?,
                },
            }),
            OutputType::Syslog => {
                let transport = value(&self.transport).unwrap_or_default();
                let address = match (&self.address, transport) {
                    (Some(a), _) => a.get_ref().clone(),
                    (None, SyslogTransport::Unix) => "/dev/log".into(),
                    (None, _) => {
                        return Err((
                            table,
                            "a udp or tcp syslog output needs an address (host:port)".into(),
                        ));
                    }
                };
                let facility = match &self.facility {
                    None => default_facility(),
                    Some(f) if syslog::facility_code(f.get_ref()).is_some() => f.get_ref().clone(),
                    Some(f) => {
                        return Err((
                            f.span(),
                            format!(
                                "facility must be one of {}",
                                syslog::FACILITIES.map(|(name, _)| name).join(", ")
                            ),
                        ));
                    }
                };
                let app_name = match &self.app_name {
                    None => default_app_name(),
                    Some(a) if syslog::valid_app_name(a.get_ref()) => a.get_ref().clone(),
                    Some(a) => {
                        return Err((
                            a.span(),
                            "app_name must be 1 to 48 printable ASCII characters, no spaces".into(),
                        ));
                    }
                };
                let max_message_bytes = match &self.max_message_bytes {
                    None => syslog::DEFAULT_MAX_MESSAGE,
                    Some(m) => usize::try_from(*m.get_ref())
                        .ok()
                        .filter(|m| {
                            (syslog::MIN_MAX_MESSAGE..=syslog::DEFAULT_MAX_MESSAGE).contains(m)
                        })
                        .ok_or((
                            m.span(),
                            format!(
                                "max_message_bytes must be between {} and {}",
                                syslog::MIN_MAX_MESSAGE,
                                syslog::DEFAULT_MAX_MESSAGE
                            ),
                        ))?,
                };
                OutputConfig::Syslog(SyslogOutput {
                    transport,
                    address,
                    format,
                    queue,
                    alerts_only,
                    facility,
                    app_name,
                    max_message_bytes,
                })
            }
        })
    }
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_keep() -> usize {
    5
}
fn default_socket_mode() -> u32 {
    0o600
}
/// A subscriber must be able to hold a whole batch (64 KiB plus the record
/// that crossed that mark) with room to spare.
const MIN_SUBSCRIBER_BUFFER: usize = 256 * 1024;
fn default_subscriber_buffer() -> usize {
    1024 * 1024
}
fn default_facility() -> String {
    "authpriv".into()
}
fn default_app_name() -> String {
    "link-trace".into()
}

impl OutputConfig {
    pub fn common(&self) -> Common {
        let (format, queue, alerts_only) = match self {
            OutputConfig::Stdout(o) => (o.format, o.queue, o.alerts_only),
            OutputConfig::File(o) => (o.format, o.queue, o.alerts_only),
            OutputConfig::Unix(o) => (o.format, o.queue, o.alerts_only),
            OutputConfig::Syslog(o) => (o.format, o.queue, o.alerts_only),
        };
        Common {
            format,
            queue,
            alerts_only,
        }
    }

    /// A short name for messages and metrics labels: `file:/var/log/x.jsonl`.
    pub fn name(&self) -> String {
        match self {
            OutputConfig::Stdout(_) => "stdout".into(),
            OutputConfig::File(o) => format!("file:{}", o.path.display()),
            OutputConfig::Unix(o) => format!("unix:{}", o.path.display()),
            OutputConfig::Syslog(o) => {
                let transport = match o.transport {
                    SyslogTransport::Unix => "unix",
                    SyslogTransport::Udp => "udp",
                    SyslogTransport::Tcp => "tcp",
                };
                format!("syslog+{transport}:{}", o.address)
            }
        }
    }

    /// Parses an `--output` flag: `TYPE[:TARGET][,KEY=VALUE]...`, e.g.
    /// `stdout,format=text`, `file:/var/log/lt.jsonl,max_bytes=1048576,keep=3`,
    /// `unix:/run/link-trace/events.sock`, `syslog+tcp:10.0.0.5:6514`,
    /// `syslog+unix:/dev/log`. Keys and checks are the file's.
    pub fn parse_flag(spec: &str) -> Result<OutputConfig, String> {
        let mut parts = spec.split(',');
        let head = parts.next().unwrap_or_default();
        let (kind, target) = match head.split_once(':') {
            Some((kind, target)) => (kind, Some(target)),
            None => (head, None),
        };
        let mut table = toml::Table::new();
        let (kind, target_key) = match kind {
            "stdout" => ("stdout", None),
            "file" => ("file", Some("path")),
            "unix" => ("unix", Some("path")),
            "syslog" | "syslog+unix" => ("syslog", Some("address")),
            "syslog+udp" | "syslog+tcp" => {
                table.insert("transport".into(), kind["syslog+".len()..].into());
                ("syslog", Some("address"))
            }
            other => {
                return Err(format!(
                    "unknown output type {other:?} (stdout, file, unix, syslog, syslog+udp, syslog+tcp, syslog+unix)"
                ));
            }
        };
        table.insert("type".into(), kind.into());
        match (target_key, target) {
            (Some(key), Some(target)) if !target.is_empty() => {
                table.insert(key.into(), target.into());
            }
            (None, Some(_)) => return Err(format!("{kind} takes no target after ':'")),
            _ => {}
        }
        for option in parts {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| format!("{option:?} is not KEY=VALUE"))?;
            // Numbers and booleans as TOML reads them; anything else is a
            // string, and so is a mode, whose leading 0 means octal.
            let value = if key == "mode" {
                value.into()
            } else {
                value
                    .parse::<i64>()
                    .map(toml::Value::from)
                    .or_else(|_| value.parse::<bool>().map(toml::Value::from))
                    .unwrap_or_else(|_| value.into())
            };
            table.insert(key.into(), value);
        }
        // Through TOML text, so the values carry the spans RawOutput wants.
        let text = toml::to_string(&table).map_err(|e| e.to_string())?;
        toml::from_str::<RawOutput>(&text)
            .map_err(|e| e.message().to_string())?
            .check()
            .map_err(|(_, message)| message)
    }
}

fn de_comms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<[u8; TASK_COMM_LEN]>>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|name| crate::cli::parse_comm(name))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_ring_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let bytes = u64::deserialize(d)?;
    crate::cli::parse_ring_bytes(&bytes.to_string())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        // One line, "line L, column C: what", so it reads well in a log.
        let at = |offset: usize| {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        };
        let mut config: FileConfig = toml::from_str(text).map_err(|e| {
            let place = e.span().map(|span| at(span.start)).unwrap_or_default();
            invalid(format!("{place}: {}", e.message().trim_end()))
        })?;
        if let Some(raw) = config.output.take() {
            let outputs = raw
                .into_iter()
                .map(RawOutput::check)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|(span, message)| invalid(format!("{}: {message}", at(span.start))))?;
            config.outputs = Some(outputs);
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

/// What the daemon runs with: the file merged with the flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The file these settings came from, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    pub pids: Vec<u32>,
    pub uids: Vec<u32>,
    pub comms: Vec<[u8; TASK_COMM_LEN]>,
    pub stats_interval: u64,
    /// How far below nice 0 the daemon runs (0: unchanged).
    pub priority_boost: u8,
    pub ring_bytes: u32,
    pub alerts_only: bool,
    pub rules: RuleArgs,
    pub metrics_listen: Option<SocketAddr>,
    pub keep_capabilities: bool,
    /// Capture and print unlink and rename calls (kind "context").
    pub context_events: bool,
    /// `metrics_listen` may be a non-loopback address.
    pub metrics_allow_remote: bool,
    pub outputs: Vec<OutputConfig>,
}

impl Settings {
    /// The file named by `--config`, else the default file when it exists,
    /// else nothing; then the flags on top.
    pub fn resolve(cli: &Cli) -> Result<Settings, ConfigError> {
        let path = match &cli.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let file = match &path {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Ok(Self::merge(path, file, cli))
    }

    pub fn merge(config_path: Option<PathBuf>, file: FileConfig, cli: &Cli) -> Settings {
        fn pick<T>(flag: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag
            }
        }
        let json = cli.json || file.json.unwrap_or(false);
        let outputs = if !cli.outputs.is_empty() {
            cli.outputs.clone()
        } else {
            file.outputs.unwrap_or_default()
        };
        let outputs = if outputs.is_empty() {
            vec![OutputConfig::Stdout(StdoutOutput {
                format: if json {
                    OutputFormat::Json
                } else {
                    OutputFormat::Text
                },
                queue: DEFAULT_QUEUE,
                alerts_only: false,
            })]
        } else {
            outputs
        };
        let rule_files = pick(cli.rules.files.clone(), file.rules);
        Settings {
            config_path,
            pids: pick(cli.pids.clone(), file.pid),
            uids: pick(cli.uids.clone(), file.uid),
            comms: pick(cli.comms.clone(), file.comm),
            stats_interval: cli
                .stats_interval
                .or(file.stats_interval)
                .unwrap_or(DEFAULT_STATS_INTERVAL),
            priority_boost: cli
                .priority_boost
                .or(file.priority_boost)
                .unwrap_or(DEFAULT_PRIORITY_BOOST),
            ring_bytes: cli
                .ring_bytes
                .or(file.ring_bytes)
                .unwrap_or(DEFAULT_RING_BYTES),
            alerts_only: cli.alerts_only || file.alerts_only.unwrap_or(false),
            rules: RuleArgs {
                files: rule_files,
                no_builtin_rules: cli.rules.no_builtin_rules
                    || file.no_builtin_rules.unwrap_or(false),
                rules_dir: cli
                    .rules
                    .rules_dir
                    .clone()
                    .or(file.rules_dir)
                    .or_else(|| Some(PathBuf::from(RULES_DIR))),
            },
            metrics_listen: cli.metrics_listen.or(file.metrics_listen),
            keep_capabilities: cli.keep_capabilities || file.keep_capabilities.unwrap_or(false),
            context_events: cli.context_events || file.context_events.unwrap_or(false),
            metrics_allow_remote: cli.metrics_allow_remote
                || file.metrics_allow_remote.unwrap_or(false),
            outputs,
        }
    }

    /// The kernel-side filter sets and the priority boost are bounded.
    pub fn check_limits(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: self
                .config_path
                .clone()
                .unwrap_or_else(|| "command line".into()),
            message,
        };
        if self.priority_boost > MAX_PRIORITY_BOOST {
            return Err(invalid(format!(
                "priority_boost is at most {MAX_PRIORITY_BOOST} (nice -20), got {}",
                self.priority_boost
            )));
        }
        for (name, len) in [
            ("pid", self.pids.len()),
            ("uid", self.uids.len()),
            ("comm", self.comms.len()),
        ] {
            if len > FILTER_MAX_ENTRIES as usize {
                return Err(invalid(format!(
                    "at most {FILTER_MAX_ENTRIES} {name} values are supported, got {len}"
                )));
            }
        }
        Ok(())
    }

    /// Keeps `old`'s values for what only a restart can change (the
    /// programs' filters and ring, the metrics socket, the capabilities)
    /// and names the settings that differed.
    pub fn keep_restart_only(&mut self, old: &Settings) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            changed: &mut Vec<&'static str>,
            name: &'static str,
            new: &mut T,
            old: &T,
        ) {
            if new != old {
                changed.push(name);
                new.clone_from(old);
            }
        }
        let mut changed = Vec::new();
        keep(&mut changed, "pid", &mut self.pids, &old.pids);
        keep(&mut changed, "uid", &mut self.uids, &old.uids);
        keep(&mut changed, "comm", &mut self.comms, &old.comms);
        keep(
            &mut changed,
            "priority_boost",
            &mut self.priority_boost,
            &old.priority_boost,
        );
        keep(
            &mut changed,
            "ring_bytes",
            &mut self.ring_bytes,
            &old.ring_bytes,
        );
        keep(
            &mut changed,
            "metrics_listen",
            &mut self.metrics_listen,
            &old.metrics_listen,
        );
        keep(
            &mut changed,
            "context_events",
            &mut self.context_events,
            &old.context_events,
        );
        keep(
            &mut changed,
            "keep_capabilities",
            &mut self.keep_capabilities,
            &old.keep_capabilities,
        );
        keep(
            &mut changed,
            "metrics_allow_remote",
            &mut self.metrics_allow_remote,
            &old.metrics_allow_remote,
        );
        changed
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        FileConfig::parse(Path::new("t.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let config = parse(
            r#"
pid = [1, 2]
comm = ["ln"]
stats_interval = 10
ring_bytes = 65536
metrics_listen = "127.0.0.1:9464"
metrics_allow_remote = false

[[output]]
type = "stdout"
format = "text"

[[output]]
type = "file"
path = "/var/log/link-trace/events.jsonl"
max_bytes = 1048576
keep = 3
fsync = "batch"

[[output]]
type = "unix"
path = "/run/link-trace/events.sock"

[[output]]
type = "syslog"
transport = "tcp"
address = "127.0.0.1:6514"
alerts_only = true
"#,
        )
        .unwrap();
        let outputs = config.outputs.unwrap();
        assert_eq!(outputs.len(), 4);
        assert!(
            matches!(&outputs[1], OutputConfig::File(f) if f.keep == 3 && f.fsync == FsyncPolicy::Batch)
        );
        assert!(
            matches!(&outputs[2], OutputConfig::Unix(u) if u.mode == 0o600 && u.subscriber_buffer == 1 << 20)
        );
        assert!(outputs[3].common().alerts_only);
        assert_eq!(config.ring_bytes, Some(65536));
        assert_eq!(&config.comm.unwrap()[0][..3], b"ln\0");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let e = parse("pid = [1]\nbogus = 3\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("bogus"), "{e}");
        let e = parse("\n\nring_bytes = 1000\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("power of two"), "{e}");
        let e = parse("[[output]]\ntype = \"file\"\npath = \"/x\"\nkeeep = 2\n").unwrap_err();
        assert!(e.contains("keeep"), "{e}");
        let e = parse("[[output]]\ntype = \"carrier-pigeon\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("carrier-pigeon"), "{e}");
        let e = parse("[[output]]\ntype = \"stdout\"\nqueue = 0\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("queue"), "{e}");
        let e = parse("[[output]]\ntype = \"stdout\"\n\npath = \"/x\"\n").unwrap_err();
        assert!(
            e.contains("line 4") && e.contains("path is not an option"),
            "{e}"
        );
        let e = parse("x = 1\n[[output]]\ntype = \"file\"\n").unwrap_err();
        assert!(e.contains("x"), "{e}");
        let e = parse("[[output]]\ntype = \"file\"\nkeep = 2\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("needs a path"), "{e}");
        let e = parse("[[output]]\ntype = \"unix\"\npath = \"/s\"\nmode = \"0999\"\n").unwrap_err();
        assert!(e.contains("line 4") && e.contains("octal"), "{e}");
        let e = parse("comm = [\"0123456789abcdefgh\"]\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("comm"), "{e}");
    }

    #[test]
    fn output_flags_use_the_file_keys() {
        let out = OutputConfig::parse_flag("file:/tmp/x.jsonl,max_bytes=4096,keep=2").unwrap();
        assert!(matches!(&out, OutputConfig::File(f)
            if f.path == Path::new("/tmp/x.jsonl") && f.max_bytes == 4096 && f.keep == 2));
        let out = OutputConfig::parse_flag("syslog+tcp:127.0.0.1:6514,alerts_only=true").unwrap();
        assert!(matches!(&out, OutputConfig::Syslog(s)
            if s.transport == SyslogTransport::Tcp && s.address == "127.0.0.1:6514" && s.alerts_only));
        assert_eq!(out.name(), "syslog+tcp:127.0.0.1:6514");
        let out = OutputConfig::parse_flag("stdout,format=text").unwrap();
        assert_eq!(out.common().format, OutputFormat::Text);
        assert!(
            OutputConfig::parse_flag("file").is_err(),
            "a file needs a path"
        );
        assert!(OutputConfig::parse_flag("stdout:x").is_err());
        assert!(OutputConfig::parse_flag("file:/x,colour=red").is_err());
        assert!(OutputConfig::parse_flag("pigeon:/x").is_err());
        let out = OutputConfig::parse_flag("unix:/run/x.sock,mode=0660,subscriber_buffer=262144")
            .unwrap();
        assert!(matches!(&out, OutputConfig::Unix(u)
            if u.mode == 0o660 && u.subscriber_buffer == 262144));
        let e = OutputConfig::parse_flag("unix:/run/x.sock,subscriber_buffer=1000").unwrap_err();
        assert!(e.contains("subscriber_buffer must be"), "{e}");
        let e = OutputConfig::parse_flag("file:/x,subscriber_buffer=262144").unwrap_err();
        assert!(e.contains("not an option of a File output"), "{e}");
    }

    #[test]
    fn syslog_options_are_checked() {
        let out = OutputConfig::parse_flag(
            "syslog+udp:127.0.0.1:514,facility=local3,app_name=lt,max_message_bytes=2048",
        )
        .unwrap();
        assert!(matches!(&out, OutputConfig::Syslog(s)
            if s.facility == "local3" && s.app_name == "lt" && s.max_message_bytes == 2048));
        let out = OutputConfig::parse_flag("syslog").unwrap();
        assert!(matches!(&out, OutputConfig::Syslog(s)
            if s.transport == SyslogTransport::Unix && s.address == "/dev/log"
                && s.facility == "authpriv" && s.max_message_bytes == 65507));
        let e = parse("[[output]]\ntype = \"syslog\"\nfacility = \"local9\"\n").unwrap_err();
        assert!(
            e.contains("line 3") && e.contains("facility must be one of"),
            "{e}"
        );
        let e = parse("[[output]]\ntype = \"syslog\"\n\napp_name = \"a b\"\n").unwrap_err();
        assert!(e.contains("line 4") && e.contains("app_name"), "{e}");
        let e = OutputConfig::parse_flag("syslog+tcp:h:1,max_message_bytes=100").unwrap_err();
        assert!(e.contains("between 2048 and 65507"), "{e}");
        let e = OutputConfig::parse_flag("syslog+tcp").unwrap_err();
        assert!(e.contains("needs an address"), "{e}");
        let e = OutputConfig::parse_flag("file:/x,facility=local3").unwrap_err();
        assert!(e.contains("facility is not an option"), "{e}");
    }

    #[test]
    fn a_reload_keeps_what_only_a_restart_changes() {
        let cli = |args: &[&str]| {
            let argv = std::iter::once("link-trace").chain(args.iter().copied());
            Settings::merge(
                None,
                FileConfig::default(),
                &Cli::try_parse_from(argv).unwrap(),
            )
        };
        let old = cli(&["--pid", "1"]);
        let mut new = cli(&["--pid", "2", "--stats-interval", "9", "--context-events"]);
        assert_eq!(new.keep_restart_only(&old), ["pid", "context_events"]);
        assert_eq!((&new.pids[..], new.context_events), (&[1][..], false));
        assert_eq!(new.stats_interval, 9, "a reload changes the rest");
        assert!(new.keep_restart_only(&old).is_empty());
    }

    #[test]
    fn priority_boost_is_bounded_in_the_file_and_on_the_command_line() {
        let cli = Cli::try_parse_from(["link-trace"]).unwrap();
        let default = Settings::merge(None, FileConfig::default(), &cli);
        assert_eq!(default.priority_boost, DEFAULT_PRIORITY_BOOST);
        let s = Settings::merge(None, parse("priority_boost = 21\n").unwrap(), &cli);
        let e = s.check_limits().unwrap_err().to_string();
        assert!(e.contains("priority_boost is at most 20"), "{e}");
        let s = Settings::merge(None, parse("priority_boost = 20\n").unwrap(), &cli);
        assert!(s.check_limits().is_ok());
        assert!(Cli::try_parse_from(["link-trace", "--priority-boost", "21"]).is_err());
        assert!(parse("priority_boost = -1\n").is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = parse(
            "stats_interval = 5\npid = [9]\njson = true\n[[output]]\ntype = \"file\"\npath = \"/x\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["link-trace", "--stats-interval", "7"]).unwrap();
        let s = Settings::merge(None, file.clone(), &cli);
        assert_eq!((s.stats_interval, &s.pids[..]), (7, &[9][..]));
        assert!(matches!(s.outputs[..], [OutputConfig::File(_)]));
        let cli = Cli::try_parse_from(["link-trace", "--output", "stdout", "--pid", "3"]).unwrap();
        let s = Settings::merge(None, file, &cli);
        assert_eq!(s.pids, [3]);
        assert!(
            matches!(&s.outputs[..], [OutputConfig::Stdout(o)] if o.format == OutputFormat::Json)
        );
        // No outputs anywhere: stdout, text unless --json.
        let s = Settings::merge(
            None,
            FileConfig::default(),
            &Cli::try_parse_from(["link-trace"]).unwrap(),
        );
        assert!(
            matches!(&s.outputs[..], [OutputConfig::Stdout(o)] if o.format == OutputFormat::Text)
        );
        assert_eq!(s.stats_interval, DEFAULT_STATS_INTERVAL);
    }
}
