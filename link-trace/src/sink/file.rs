//! The file sink: records appended as lines to one file, rotated by size
//! with logrotate's naming (`PATH.1` newest … `PATH.N` oldest).
//!
//! Written by hand rather than with the `file-rotate` crate: its
//! `ContentLimit::BytesSurpassed` rotates only after a write has taken the
//! file past the limit (so files exceed it), it creates missing parent
//! directories and panics when it cannot, and it gives no hold on the file
//! to fsync it before a rename or to cut a short write back to a record
//! boundary. Those three are the guarantees this sink is for.
//!
//! Guarantees:
//! * Whole records only. A batch is split at record boundaries so that no
//!   file grows past `max_bytes`; a record longer than `max_bytes` goes alone
//!   into a fresh file. A short write (disk full, file size limit) is cut
//!   back to the last whole record, and the records that did not get through
//!   are reported as failed.
//! * Crash-safe rotation: `PATH.(keep-1)` → `PATH.keep` first (which drops
//!   the oldest), down to `PATH` → `PATH.1`, then a new `PATH`. Every rename
//!   is atomic and no name is overwritten before its content has moved on,
//!   so a crash in the middle leaves a gap in the numbers, never a lost or
//!   duplicated file.
//! * fsync policy (`FsyncPolicy`): `batch` fdatasyncs after every batch (a
//!   record counts as delivered once it is on disk); `rotate` fsyncs the file
//!   before each rotation and at exit; `never` leaves write-back to the
//!   kernel. With `batch` and `rotate` the directory is fsynced after a
//!   rotation, so the new names survive a crash too.
//! * If someone else moves or deletes the file (logrotate, `rm`), the sink
//!   notices within a second (or at its next idle tick) and opens `PATH`
//!   afresh; a file truncated in place (logrotate `copytruncate`) is noticed
//!   the same way, so the size limit counts from the new length.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Batch, DeliverError, SinkError, Transport};
use crate::config::{FileOutput, FsyncPolicy};

/// Mode of a file the sink creates (before the umask): events name files
/// and users, so not world-readable.
const FILE_MODE: u32 = 0o640;
/// How often a busy sink checks that `PATH` is still its file.
const IDENTITY_CHECK_EVERY: Duration = Duration::from_secs(1);

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    fsync: FsyncPolicy,
    /// None when the file could not be (re)opened; retried on every batch.
    live: Option<Live>,
    last_check: Instant,
}

/// The file being appended to.
struct Live {
    file: File,
    /// Bytes in the file, all of them whole records.
    size: u64,
    dev: u64,
    ino: u64,
    /// A short write left part of a record past `size` and cutting it back
    /// failed; it is cut before anything else is written.
    torn: bool,
}

impl FileSink {
    /// Opens (or creates, mode 0640) the file. The directory must exist.
    pub fn open(config: &FileOutput) -> io::Result<FileSink> {
        let dir = parent(&config.path);
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            ));
        }
        let live = Live::open(&config.path)?;
        Ok(FileSink {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            fsync: config.fsync,
            live: Some(live),
            last_check: Instant::now(),
        })
    }

    /// `PATH.n`.
    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// The open file, reopening it when needed.
    fn live(&mut self) -> io::Result<&mut Live> {
        if self.live.is_none() {
            self.live = Some(Live::open(&self.path)?);
        }
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| io::Error::other("no file"))?;
        if live.torn {
            live.file.set_len(live.size)?;
            live.torn = false;
        }
        Ok(live)
    }

    /// Reopens `PATH` when it is no longer the file we write (moved, deleted,
    /// replaced), and follows a truncation or an append by someone else.
    fn check_identity(&mut self) {
        self.last_check = Instant::now();
        let Some(live) = &mut self.live else {
            if let Ok(live) = Live::open(&self.path) {
                self.live = Some(live);
            }
            return;
        };
        let ours = live.file.metadata();
        let at_path = std::fs::metadata(&self.path);
        let same = match (&ours, &at_path) {
            (Ok(ours), Ok(there)) => {
                ours.nlink() > 0 && (ours.dev(), ours.ino()) == (there.dev(), there.ino())
            }
            _ => false,
        };
        if same {
            if let Ok(ours) = ours
                && !live.torn
                && ours.len() != live.size
            {
                live.size = ours.len();
            }
            return;
        }
        // Whatever was written to the old file stays there; new records go
        // to a new file at PATH.
        self.live = Live::open(&self.path).ok();
    }

    /// Moves the full file aside (or removes it, keep = 0) and opens a new
    /// one. Oldest first: each rename only replaces a name whose content has
    /// already moved on or is the oldest, which is dropped. The caller has
    /// fsynced the full file when the policy says so.
    fn rotate(&mut self) -> io::Result<()> {
        let still_ours = self.live.as_ref().is_some_and(|live| {
            std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == (live.dev, live.ino))
        });
        // When someone else has moved the file away already (logrotate), the
        // names are theirs to manage: just start a new file.
        if still_ours && self.keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else if still_ours {
            for n in (1..self.keep).rev() {
                ignore_missing(std::fs::rename(self.numbered(n), self.numbered(n + 1)))?;
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        self.live = None;
        self.live = Some(Live::open(&self.path)?);
        if self.fsync != FsyncPolicy::Never {
            File::open(parent(&self.path))?.sync_all()?;
        }
        Ok(())
    }
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Live {
    fn open(path: &Path) -> io::Result<Live> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let mut size = meta.len();
        // A file cut off mid-line (a crash of an earlier run) gets its line
        // ended, so the first new record starts on a line of its own.
        if size > 0 {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, size - 1)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                size += 1;
            }
        }
        Ok(Live {
            file,
            size,
            dev: meta.dev(),
            ino: meta.ino(),
            torn: false,
        })
    }
}

/// Writes all of `bytes`, or says how many got through before the error.
fn write_counting(mut file: &File, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

impl Transport for FileSink {
    fn deliver(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        if self.last_check.elapsed() >= IDENTITY_CHECK_EVERY {
            self.check_identity();
        }
        // Records before `done` are written. They count as delivered, except
        // with fsync = batch: then only those before `synced`, which an
        // fsync has put on disk. (A second fsync after a failed one may say
        // yes for pages the kernel dropped, so a failure is never retried
        // to count records.)
        let (mut done, mut synced) = (0, 0);
        let must_sync = self.fsync == FsyncPolicy::Batch;
        let sync_on_rotate = self.fsync != FsyncPolicy::Never;
        let failed = |done: usize, synced: usize, e: io::Error| DeliverError {
            delivered: if must_sync { synced } else { done },
            error: SinkError::Failed(e),
        };
        let max_bytes = self.max_bytes;
        while done < batch.len() {
            let start = if done == 0 { 0 } else { batch.ends[done - 1] };
            let live = match self.live() {
                Ok(live) => live,
                Err(e) => return Err(failed(done, synced, e)),
            };
            // The records that still fit in this file.
            let mut end = done;
            while end < batch.len() && live.size + (batch.ends[end] - start) as u64 <= max_bytes {
                end += 1;
            }
            if end == done {
                if live.size > 0 {
                    if sync_on_rotate {
                        if let Err(e) = live.file.sync_all() {
                            return Err(failed(done, synced, e));
                        }
                        synced = done;
                    }
                    if let Err(e) = self.rotate() {
                        return Err(failed(done, synced, e));
                    }
                    continue;
                }
                // Longer than max_bytes: alone in a fresh file.
                end = done + 1;
            }
            let chunk = &batch.bytes[start..batch.ends[end - 1]];
            match write_counting(&live.file, chunk) {
                Ok(()) => {
                    live.size += chunk.len() as u64;
                    done = end;
                }
                Err((written, e)) => {
                    // Keep the whole records that got through; cut the rest.
                    let whole = batch.ends[done..end]
                        .iter()
                        .take_while(|&&record_end| record_end - start <= written)
                        .count();
                    let kept = if whole == 0 {
                        0
                    } else {
                        batch.ends[done + whole - 1] - start
                    };
                    live.size += kept as u64;
                    if written > kept {
                        live.torn = live.file.set_len(live.size).is_err();
                    }
                    done += whole;
                    if must_sync && live.file.sync_data().is_ok() {
                        synced = done;
                    }
                    return Err(failed(done, synced, e));
                }
            }
        }
        if must_sync
            && let Some(live) = &self.live
            && let Err(e) = live.file.sync_data()
        {
            return Err(failed(done, synced, e));
        }
        Ok(())
    }

    fn idle(&mut self) {
        self.check_identity();
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        match &self.live {
            Some(live) if self.fsync != FsyncPolicy::Never => {
                live.file.sync_all().map_err(SinkError::Failed)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
