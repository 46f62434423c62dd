//! The seams between the log and the outside world: file I/O and the clock.
//!
//! Everything the log does to disk goes through [`Io`] and [`IoFile`], and every
//! "now" comes from a [`Clock`], so tests can inject torn writes, fsync failures and
//! time ([`FaultyIo`], [`ManualClock`]). This module knows nothing of batches or
//! segments.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Wall-clock milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(now_ms)))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// An open file. All methods take `&self` and positions are explicit, so one handle
/// can be shared by the appender, the group-commit syncer and readers.
pub trait IoFile: Send + Sync + fmt::Debug {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// File-system operations used by the log.
pub trait Io: Send + Sync + fmt::Debug {
    /// Open for reading and writing, creating the file if missing.
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    /// Open an existing file read-only.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir).
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// fsync a directory so that created or removed entries are durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

#[derive(Debug)]
struct StdFile(File);

impl IoFile for StdFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Io for StdIo {
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Ok(Arc::new(StdFile(f)))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(StdFile(File::open(path)?)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            self.sync_dir(dir)?;
        }
        Ok(())
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in fs::read_dir(path)? {
            out.push(e?.path());
        }
        out.sort();
        Ok(out)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// Faults to inject, shared between a test and the [`FaultyIo`] it installed.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail every `sync_data` while non-zero (decremented per failure; `u64::MAX` = forever).
    pub fail_syncs: AtomicU64,
    /// If set, the next write on a `.log` file writes only this many bytes, then fails.
    pub torn_write_bytes: Mutex<Option<usize>>,
    /// Count of successful `sync_data` calls, to observe group commit.
    pub syncs: AtomicU64,
}

/// [`StdIo`] with injectable faults.
#[derive(Debug, Clone)]
pub struct FaultyIo {
    pub faults: Arc<Faults>,
}

impl FaultyIo {
    pub fn new() -> (FaultyIo, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (FaultyIo { faults: faults.clone() }, faults)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn IoFile>,
    is_log: bool,
    faults: Arc<Faults>,
}

impl IoFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.is_log {
            let torn = self.faults.torn_write_bytes.lock().map(|mut t| t.take()).unwrap_or(None);
            if let Some(n) = torn {
                self.inner.write_all_at(&buf[..n.min(buf.len())], pos)?;
                return Err(io::Error::other("injected torn write"));
            }
        }
        self.inner.write_all_at(buf, pos)
    }
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        let fail = self
            .faults
            .fail_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if fail {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Io for FaultyIo {
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        Ok(Arc::new(FaultyFile {
            inner: StdIo.open_rw(path)?,
            is_log: path.extension().is_some_and(|e| e == "log"),
            faults: self.faults.clone(),
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn IoFile>> {
        StdIo.open_read(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdIo.read(path)
    }
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        StdIo.write_atomic(path, data)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdIo.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        StdIo.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdIo.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdIo.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdIo.sync_dir(path)
    }
}

/// Take an exclusive, non-blocking advisory lock (`flock`) on `path`, creating it.
/// The lock lives as long as the returned file. Returns `Ok(None)` if another process
/// (or another handle in this process) holds it.
pub fn try_lock_file(path: &Path) -> io::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    // SAFETY: flock on a valid, owned file descriptor has no memory-safety preconditions.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(f));
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(err)
    }
}
