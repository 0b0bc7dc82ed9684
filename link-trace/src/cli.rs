//! Command-line interface.

use clap::Parser;
use link_trace_common::{DEFAULT_RING_BYTES, FILTER_MAX_ENTRIES, TASK_COMM_LEN};

/// Trace every link(2) and linkat(2) call on this host with eBPF.
#[derive(Debug, Parser)]
#[command(name = "link-trace", version, about)]
pub struct Cli {
    /// Print one JSON object per line (see schema/link-trace-event.schema.json)
    /// instead of readable text.
    #[arg(long)]
    pub json: bool,

    /// Only calls from these processes (tgid); repeatable. Applied in the kernel.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only calls by these real uids; repeatable. Applied in the kernel.
    #[arg(long = "uid", value_name = "UID")]
    pub uids: Vec<u32>,

    /// Only calls from tasks with this exact comm (at most 15 bytes, as the
    /// kernel keeps it); repeatable. Applied in the kernel.
    #[arg(long = "comm", value_name = "COMM", value_parser = parse_comm)]
    pub comms: Vec<[u8; TASK_COMM_LEN]>,

    /// Seconds between `stats` records (0: only the one at exit).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub stats_interval: u64,

    /// Ring buffer size in bytes: a power of two, at least one page.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
}

impl Cli {
    pub fn validate(&self) -> Result<(), String> {
        for (name, len) in [
            ("--pid", self.pids.len()),
            ("--uid", self.uids.len()),
            ("--comm", self.comms.len()),
        ] {
            if len > FILTER_MAX_ENTRIES as usize {
                return Err(format!(
                    "at most {FILTER_MAX_ENTRIES} {name} values are supported, got {len}"
                ));
            }
        }
        Ok(())
    }
}

fn parse_comm(value: &str) -> Result<[u8; TASK_COMM_LEN], String> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() >= TASK_COMM_LEN || bytes.contains(&0) {
        return Err(format!(
            "a comm is 1 to {} bytes without NUL, as the kernel stores it",
            TASK_COMM_LEN - 1
        ));
    }
    let mut comm = [0u8; TASK_COMM_LEN];
    comm[..bytes.len()].copy_from_slice(bytes);
    Ok(comm)
}

fn parse_ring_bytes(value: &str) -> Result<u32, String> {
    let bytes: u32 = value
        .parse()
        .map_err(|e| format!("not a byte count: {e}"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err("the ring size must be a power of two of at least 4096 bytes".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_padded_and_bounded() {
        let comm = parse_comm("ln").unwrap();
        assert_eq!(&comm[..3], b"ln\0");
        assert!(parse_comm("").is_err());
        assert!(parse_comm("0123456789abcdef").is_err());
        assert!(parse_comm("0123456789abcde").is_ok());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_bytes("65536"), Ok(65536));
        assert!(parse_ring_bytes("65535").is_err());
        assert!(parse_ring_bytes("2048").is_err());
        assert!(parse_ring_bytes("big").is_err());
    }
}
