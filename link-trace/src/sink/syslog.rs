//! The syslog sink: one RFC 5424 message per record, over UDP (RFC 5426,
//! one datagram per message), TCP (RFC 6587 octet counting: `LEN SP MSG`)
//! or a local datagram socket (`/dev/log`, as syslog(3) does).
//!
//! The RFC 5424 formatter is written here rather than taken from a crate:
//! the `syslog` crate's `Formatter5424` stamps messages with the current
//! time (a record carries its own), takes a numeric MSGID, builds its
//! structured data from a `HashMap` per message and does not escape SD
//! values; the others are small and little used. What is needed is ~80
//! lines with no allocation per message, and the unit tests parse every
//! message back with a strict RFC 5424 parser.
//!
//! Delivery: a record counts as delivered when the kernel accepted it. When
//! the server is away, records are dropped and counted (`dropped_failed`)
//! while the sink reconnects with exponential backoff and jitter (100 ms
//! doubling to 30 s); the sink never waits for a server for long, so its
//! queue keeps draining. What cannot be seen from here is written down in
//! the README (Outputs, syslog).

use std::{
    fmt::Display,
    io::{self, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{Batch, DeliverError, Rendered, SinkError, Transport};
use crate::{
    config::{OutputConfig, OutputFormat, SyslogOutput, SyslogTransport},
    event::{LinkEvent, Record},
    rules::Severity,
};

/// The largest UDP payload over IPv4; also the default for the other transports.
pub const DEFAULT_MAX_MESSAGE: usize = 65507;
/// RFC 5424 §6.1: receivers SHOULD accept messages of 2048 octets. The
/// header and structured data always fit in this (see SD_VALUE_MAX).
pub const MIN_MAX_MESSAGE: usize = 2048;
/// The structured data element's id: a name of ours at the private
/// enterprise number RFC 5612 reserves for documentation, the form RFC 5424
/// §7.2.2 prescribes for SD-IDs that are not IANA-registered.
pub const SD_ID: &str = "link-trace@32473";
/// Structured data values longer than this are cut (only a rule id could
/// be); the whole value is in the message anyway.
const SD_VALUE_MAX: usize = 128;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A TCP server that accepts nothing for this long is given up on; a local
/// socket whose reader is this far behind drops the rest of the batch.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const UNIX_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a UDP server was found away, the first message sent to it waits
/// this long for the ICMP error that says it is still away.
const UDP_PROBE_WAIT: Duration = Duration::from_millis(50);

/// Facility names as syslog.conf spells them, with their RFC 5424 codes.
pub const FACILITIES: [(&str, u8); 20] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

pub fn facility_code(name: &str) -> Option<u8> {
    FACILITIES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|&(_, code)| code)
}

/// RFC 5424 APP-NAME: 1*48PRINTUSASCII.
pub fn valid_app_name(name: &str) -> bool {
    (1..=48).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

/// Severity (RFC 5424 numeric) of a record. Failed calls are `notice`: an
/// EPERM from protected_hardlinks is worth a look; successful ones `info`.
pub fn severity(record: &Record) -> u8 {
    match record {
        Record::Alert(alert) => match alert.severity {
            Severity::Critical => 2,
            Severity::High => 3,
            Severity::Medium => 4,
            Severity::Low => 5,
            Severity::Info => 6,
        },
        Record::Event(event) if event.success => 6,
        Record::Event(_) => 5,
        Record::Context(_) => 6,
        Record::Loss(_) => 4,
        Record::Stats(_) => 6,
    }
}

fn msgid(record: &Record) -> &'static str {
    match record {
        Record::Event(_) => "event",
        Record::Context(_) => "context",
        Record::Alert(_) => "alert",
        Record::Loss(_) => "loss",
        Record::Stats(_) => "stats",
    }
}

/// Builds RFC 5424 messages: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID
/// MSGID [link-trace@32473 ...] MSG`.
pub struct Formatter {
    facility: u8,
    hostname: String,
    app_name: String,
    procid: String,
    max_message: usize,
    /// The record in the output format, reused between messages.
    body: Vec<u8>,
}

impl Formatter {
    pub fn new(facility: u8, hostname: &str, app_name: &str, max_message: usize) -> Self {
        Formatter {
            facility,
            hostname: header_field(hostname, 255),
            app_name: header_field(app_name, 48),
            procid: std::process::id().to_string(),
            max_message,
            body: Vec::new(),
        }
    }

    /// Appends one message to `out`. A message longer than `max_message`
    /// has its MSG cut at a UTF-8 boundary and `truncated="FULL_MSG_BYTES"`
    /// in its structured data.
    pub fn format(&mut self, format: OutputFormat, record: &Record, out: &mut Vec<u8>) -> Rendered {
        self.body.clear();
        super::render(format, record, &mut self.body);
        if self.body.last() == Some(&b'\n') {
            self.body.pop();
        }
        let start = out.len();
        let _ = write!(
            out,
            "<{}>1 ",
            u16::from(self.facility) * 8 + u16::from(severity(record))
        );
        push_timestamp(record_time(record), out);
        let _ = write!(
            out,
            " {} {} {} {} [{SD_ID}",
            self.hostname,
            self.app_name,
            self.procid,
            msgid(record)
        );
        sd_params(record, out);
        // "] " closes the structured data before MSG.
        let rendered = if out.len() - start + 2 + self.body.len() > self.max_message {
            number_param(out, "truncated", self.body.len());
            let room = self.max_message.saturating_sub(out.len() - start + 2);
            self.body.truncate(utf8_floor(&self.body, room));
            Rendered::Truncated
        } else {
            Rendered::Whole
        };
        out.extend_from_slice(b"] ");
        out.extend_from_slice(&self.body);
        rendered
    }
}

fn record_time(record: &Record) -> &str {
    match record {
        Record::Event(event) => &event.time,
        Record::Context(context) => &context.0.time,
        Record::Alert(alert) => &alert.time,
        Record::Loss(loss) => &loss.time,
        Record::Stats(stats) => &stats.time,
    }
}

/// The record's RFC 3339 time with at most 6 fractional digits (RFC 5424
/// TIME-SECFRAC; the nanoseconds are in MSG), or NILVALUE if it is not
/// `YYYY-MM-DDTHH:MM:SS[.F...]Z`.
fn push_timestamp(time: &str, out: &mut Vec<u8>) {
    let bytes = time.as_bytes();
    let shape_ok = bytes.len() >= 20
        && bytes.last() == Some(&b'Z')
        && bytes[..19].iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    let fraction = &bytes[19.min(bytes.len())..bytes.len().saturating_sub(1)];
    let fraction_ok = fraction.is_empty()
        || (fraction.len() >= 2
            && fraction[0] == b'.'
            && fraction[1..].iter().all(u8::is_ascii_digit));
    if !(shape_ok && fraction_ok) {
        out.push(b'-');
        return;
    }
    out.extend_from_slice(&bytes[..19]);
    out.extend_from_slice(&fraction[..fraction.len().min(7)]);
    out.push(b'Z');
}

/// A header field: PRINTUSASCII only (others become '_'), at most `max`
/// bytes, NILVALUE when empty.
fn header_field(value: &str, max: usize) -> String {
    let field: String = value
        .bytes()
        .take(max)
        .map(|b| if b.is_ascii_graphic() { b as char } else { '_' })
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

fn event_params(e: &LinkEvent, out: &mut Vec<u8>) {
    number_param(out, "seq", e.seq);
    text_param(out, "syscall", e.syscall);
    number_param(out, "pid", e.pid);
    number_param(out, "uid", e.uid);
    text_param(out, "comm", &e.comm);
    number_param(out, "ret", e.ret);
    if let Some(errno) = &e.errno {
        text_param(out, "errno", errno);
    }
}

fn sd_params(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Event(e) => event_params(e, out),
        Record::Context(context) => event_params(&context.0, out),
        Record::Alert(a) => {
            text_param(out, "rule", &a.rule_id);
            text_param(out, "severity", a.severity.name());
            if let Some(seq) = a.event_seqs.last() {
                number_param(out, "seq", seq);
            }
            number_param(out, "pid", a.pid);
            number_param(out, "uid", a.uid);
        }
        Record::Loss(l) => {
            let reason = serde_json::to_value(l.reason).unwrap_or_default();
            text_param(out, "reason", reason.as_str().unwrap_or("?"));
            number_param(out, "count", l.count);
            number_param(out, "total", l.total);
        }
        Record::Stats(s) => {
            number_param(out, "submitted", s.kernel_submitted);
            number_param(out, "decoded", s.events_decoded);
            number_param(out, "lost", s.losses.iter().map(|l| l.total).sum::<u64>());
        }
    }
}

fn number_param(out: &mut Vec<u8>, name: &str, value: impl Display) {
    let _ = write!(out, " {name}=\"{value}\"");
}

/// PARAM-VALUE with '"', '\' and ']' escaped (RFC 5424 §6.3.3).
fn text_param(out: &mut Vec<u8>, name: &str, value: &str) {
    let _ = write!(out, " {name}=\"");
    let value = &value[..utf8_floor(value.as_bytes(), SD_VALUE_MAX)];
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The largest length ≤ `max` that does not split a UTF-8 sequence.
fn utf8_floor(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let mut end = max;
    // Continuation bytes are 0b10xx_xxxx.
    while end > 0 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    end
}

/// When the next connection attempt may be made: 100 ms after the first
/// failure, doubling to 30 s, each delay drawn from its upper half so that
/// many tracers do not reconnect in step.
struct Backoff {
    failures: u32,
    next_attempt: Instant,
    rng: fastrand::Rng,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            failures: 0,
            next_attempt: Instant::now(),
            rng: fastrand::Rng::new(),
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next_attempt
    }

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(16);
        let delay = BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX);
        self.next_attempt = Instant::now() + delay.mul_f64(0.5 + 0.5 * self.rng.f64());
    }

    fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// The connection was fine until now: try again at once.
    fn retry_now(&mut self) {
        self.next_attempt = Instant::now();
    }
}

/// The sink: formats each record as it is batched, then sends the batch.
pub struct Syslog {
    name: String,
    formatter: Formatter,
    link: Link,
    /// One message, before TCP framing.
    message: Vec<u8>,
    backoff: Backoff,
    /// Why the destination is away, for the records dropped meanwhile.
    down: Option<String>,
}

enum Link {
    Udp {
        socket: UdpSocket,
        probing: bool,
    },
    Tcp {
        addrs: Vec<SocketAddr>,
        stream: Option<TcpStream>,
    },
    Unix {
        path: PathBuf,
        socket: Option<UnixDatagram>,
    },
}

impl Syslog {
    /// Resolves the address and connects. A TCP server or local socket that
    /// is not there yet is not an error: the sink warns and retries with
    /// backoff. A bad or unresolvable address is.
    pub fn open(config: &SyslogOutput) -> io::Result<Syslog> {
        let facility = facility_code(&config.facility).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown facility {:?}", config.facility),
            )
        })?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let formatter = Formatter::new(
            facility,
            hostname.trim_end(),
            &config.app_name,
            config.max_message_bytes,
        );
        let link = match config.transport {
            SyslogTransport::Udp => {
                let addr = resolve(&config.address)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| no_address(&config.address))?;
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let socket = UdpSocket::bind(local)?;
                socket.connect(addr)?;
                Link::Udp {
                    socket,
                    probing: false,
                }
            }
            SyslogTransport::Tcp => Link::Tcp {
                addrs: resolve(&config.address)?,
                stream: None,
            },
            SyslogTransport::Unix => Link::Unix {
                path: PathBuf::from(&config.address),
                socket: None,
            },
        };
        let mut sink = Syslog {
            name: OutputConfig::Syslog(config.clone()).name(),
            formatter,
            link,
            message: Vec::new(),
            backoff: Backoff::new(),
            down: None,
        };
        if !matches!(sink.link, Link::Udp { .. }) {
            // A failure warns (went_down) and starts the backoff.
            let _ = sink.connect();
        }
        Ok(sink)
    }

    /// One connection attempt (TCP, unix); on failure the backoff grows.
    fn connect(&mut self) -> io::Result<()> {
        let result = match &mut self.link {
            Link::Udp { .. } => Ok(()),
            Link::Tcp { addrs, stream } => connect_tcp(addrs).map(|s| *stream = Some(s)),
            Link::Unix { path, socket } => connect_unix(path).map(|s| *socket = Some(s)),
        };
        match &result {
            Ok(()) => {
                self.backoff.succeeded();
                if self.down.take().is_some() {
                    eprintln!("link-trace: output {}: reconnected", self.name);
                }
            }
            Err(e) => {
                self.backoff.failed();
                self.went_down(e);
            }
        }
        result
    }

    fn went_down(&mut self, error: &io::Error) {
        if self.down.is_none() {
            eprintln!(
                "link-trace: warning: output {}: {error}; reconnecting with backoff, records are dropped and counted until then",
                self.name
            );
        }
        self.down = Some(error.to_string());
    }

    /// The error for records dropped while the destination is away.
    fn away(&self) -> DeliverError {
        SinkError::Failed(io::Error::new(
            io::ErrorKind::NotConnected,
            self.down.clone().unwrap_or_else(|| "not connected".into()),
        ))
        .into()
    }

    fn deliver_tcp(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        let Link::Tcp { stream, .. } = &mut self.link else {
            return Ok(());
        };
        // A server that closed the connection (a restart) is seen here,
        // before anything is written into a dead connection.
        if let Some(s) = stream
            && let Err(e) = peer_still_there(s)
        {
            *stream = None;
            self.backoff.retry_now();
            self.went_down(&e);
        }
        if matches!(&self.link, Link::Tcp { stream: None, .. }) {
            if !self.backoff.due() {
                return Err(self.away());
            }
            self.connect().map_err(SinkError::Failed)?;
        }
        let Link::Tcp {
            stream: Some(s), ..
        } = &mut self.link
        else {
            return Err(self.away());
        };
        let mut written = 0;
        while written < batch.bytes.len() {
            match s.write(&batch.bytes[written..]) {
                Ok(0) => {
                    return Err(self.lost_tcp(batch, written, io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost_tcp(batch, written, e)),
            }
        }
        Ok(())
    }

    /// A write failed after `written` bytes: the frames written whole were
    /// accepted by the kernel; a frame cut in the middle is lost with the rest.
    fn lost_tcp(&mut self, batch: &Batch, written: usize, error: io::Error) -> DeliverError {
        if let Link::Tcp { stream, .. } = &mut self.link {
            *stream = None;
        }
        self.backoff.retry_now();
        self.went_down(&error);
        DeliverError {
            delivered: batch.ends.iter().take_while(|&&end| end <= written).count(),
            error: SinkError::Failed(error),
        }
    }

    fn deliver_udp(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        let Link::Udp { socket, probing } = &mut self.link else {
            return Ok(());
        };
        let mut records = batch.records().enumerate();
        if *probing {
            if !self.backoff.due() {
                return Err(self.away());
            }
            // The first message goes alone and waits for the ICMP error a
            // closed port sends back: refused, it is counted as dropped.
            if let Some((_, message)) = records.next() {
                let result = socket.send(message).and_then(|_| udp_refused(socket));
                if let Err(e) = result {
                    self.backoff.failed();
                    self.went_down(&e);
                    return Err(SinkError::Failed(e).into());
                }
                *probing = false;
                self.backoff.succeeded();
                if self.down.take().is_some() {
                    eprintln!("link-trace: output {}: the server answers again", self.name);
                }
            }
        }
        for (index, message) in records {
            if let Err(e) = socket.send(message) {
                // A closed port's ICMP error comes back on a later send: the
                // datagram that drew it was lost without this sink knowing.
                *probing = true;
                self.backoff.failed();
                self.went_down(&e);
                return Err(DeliverError {
                    delivered: index,
                    error: SinkError::Failed(e),
                });
            }
        }
        Ok(())
    }

    fn deliver_unix(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        if matches!(&self.link, Link::Unix { socket: None, .. }) {
            if !self.backoff.due() {
                return Err(self.away());
            }
            self.connect().map_err(SinkError::Failed)?;
        }
        for (index, message) in batch.records().enumerate() {
            let Err(e) = self.send_unix(message) else {
                continue;
            };
            if matches!(&self.link, Link::Unix { socket: None, .. }) {
                self.backoff.failed();
                self.went_down(&e);
            }
            return Err(DeliverError {
                delivered: index,
                error: SinkError::Failed(e),
            });
        }
        Ok(())
    }

    /// Sends one datagram. When the socket file was replaced (the server
    /// restarted) or its reader is gone, connects again at once and sends
    /// it again, as syslog(3) does; if that fails too, the socket is gone.
    fn send_unix(&mut self, message: &[u8]) -> io::Result<()> {
        let Link::Unix { path, socket } = &mut self.link else {
            return Ok(());
        };
        let Some(connected) = socket else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        match connected.send(message) {
            Ok(_) => return Ok(()),
            // The reader is alive but too far behind: it stays connected.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(e);
            }
            Err(_) => *socket = None,
        }
        let fresh = connect_unix(path)?;
        fresh.send(message)?;
        *socket = Some(fresh);
        Ok(())
    }
}

impl Transport for Syslog {
    fn render(&mut self, format: OutputFormat, record: &Record, out: &mut Vec<u8>) -> Rendered {
        if !matches!(self.link, Link::Tcp { .. }) {
            return self.formatter.format(format, record, out);
        }
        self.message.clear();
        let rendered = self.formatter.format(format, record, &mut self.message);
        // RFC 6587 octet counting: messages may hold newlines (text format).
        let _ = write!(out, "{} ", self.message.len());
        out.extend_from_slice(&self.message);
        rendered
    }

    fn deliver(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        match self.link {
            Link::Udp { .. } => self.deliver_udp(batch),
            Link::Tcp { .. } => self.deliver_tcp(batch),
            Link::Unix { .. } => self.deliver_unix(batch),
        }
    }

    /// Reconnects while nothing is queued, so that the first records after
    /// a server comes back are not dropped.
    fn idle(&mut self) {
        if let Link::Tcp {
            stream: Some(s), ..
        } = &mut self.link
            && let Err(e) = peer_still_there(s)
        {
            if let Link::Tcp { stream, .. } = &mut self.link {
                *stream = None;
            }
            self.backoff.retry_now();
            self.went_down(&e);
        }
        let disconnected = matches!(
            self.link,
            Link::Tcp { stream: None, .. } | Link::Unix { socket: None, .. }
        );
        if disconnected && self.backoff.due() {
            let _ = self.connect();
        }
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if let Link::Tcp {
            stream: Some(s), ..
        } = &mut self.link
        {
            // Everything written goes out before the FIN.
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

fn resolve(address: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("address {address:?}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(no_address(address));
    }
    Ok(addrs)
}

fn no_address(address: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("address {address:?} resolves to nothing"),
    )
}

fn connect_tcp(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_write_timeout(Some(TCP_WRITE_TIMEOUT))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(io::Error::new(e.kind(), format!("connect {addr}: {e}"))),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::NotConnected.into()))
}

fn connect_unix(path: &std::path::Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket
        .connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", path.display())))?;
    socket.set_write_timeout(Some(UNIX_WRITE_TIMEOUT))?;
    Ok(socket)
}

/// A syslog server never writes to its clients: anything readable on the
/// connection is its end (EOF, reset) or a protocol error.
fn peer_still_there(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    let result = match stream.peek(&mut byte) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the server closed the connection",
        )),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server sent data on a syslog connection",
        )),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    };
    stream.set_nonblocking(false)?;
    result
}

/// Waits up to UDP_PROBE_WAIT for an ICMP error on a connected UDP socket.
fn udp_refused(socket: &UdpSocket) -> io::Result<()> {
    socket.set_read_timeout(Some(UDP_PROBE_WAIT))?;
    let mut byte = [0u8; 1];
    match socket.recv(&mut byte) {
        // Nothing back in time, or some datagram: the port is open.
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
