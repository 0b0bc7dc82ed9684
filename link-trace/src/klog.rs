//! Forwards the eBPF programs' aya-log messages to stderr.

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Log, Metadata, Record};
use tokio::io::{Interest, unix::AsyncFd};

struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        eprintln!("link-trace (kernel) {}: {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

/// Starts forwarding; kernel logging is a diagnostic aid, so failing to set it
/// up is reported and tracing goes on.
pub fn start(ebpf: &mut Ebpf) {
    match EbpfLogger::init_with_logger(ebpf, StderrLog) {
        // SAFETY: the logger owns its ring buffer fd for as long as it lives.
        Ok(logger) => {
            match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
                Ok(mut fd) => {
                    tokio::spawn(async move {
                        while let Ok(mut guard) = fd.readable_mut().await {
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                    });
                }
                Err(e) => eprintln!("link-trace: warning: kernel log forwarding unavailable: {e}"),
            }
        }
        Err(e) => eprintln!("link-trace: warning: kernel log forwarding unavailable: {e}"),
    }
}
