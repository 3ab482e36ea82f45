//! `fs`: file-system I/O in one private directory under `FsParams::dir`.
//!
//! Phases, in order (each capped by `time_budget_ms`):
//! 1. sequential write of `file_mib` in `seq_block_kib` blocks, ending with fsync (timed);
//! 2. sequential read of what was written;
//! 3. random 4 KiB reads (`rand_ops`), aligned offsets from a fixed-seed generator;
//! 4. random 4 KiB writes (`rand_ops`), ending with fsync (timed);
//! 5. metadata: create `meta_files` empty files, stat each, unlink each (each call one op);
//! 6. fsync latency: `fsync_ops` times a buffered 4 KiB append then a timed fsync.
//!
//! Phases 1-4 are the fio jobs `rw=write|read|randread|randwrite, direct=1, ioengine=psync,
//! end_fsync=1`; phase 6 is `rw=write, bs=4k, fsync=1` (fio's "sync" latency).
//! Reads are cold: data files are opened with O_DIRECT (buffers 4096-aligned). Where O_DIRECT is
//! refused (tmpfs, some overlays) the files are opened buffered and the page cache is dropped with
//! posix_fadvise(DONTNEED) after fsync and before each read phase; metric `direct_io` says which
//! (1 = O_DIRECT, 0 = fadvise fallback).
//!
//! Everything is created inside `<dir>/isobench-fs-<pid>-<nanos>`, removed (with its contents)
//! when the workload ends, on success, on error and on panic.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{count, count_f64, higher, lower, p50_p99, per_s, Budget, SplitMix64};
use crate::protocol::Metric;
use crate::workload::FsParams;

const ALIGN: usize = 4096;
const RAND_BLOCK: usize = 4096;
const RAND_BLOCK_U64: u64 = 4096;
const MIB: u64 = 1 << 20;

pub fn run(p: &FsParams) -> Result<Vec<Metric>, String> {
    if p.file_mib == 0 || p.seq_block_kib == 0 || p.seq_block_kib % 4 != 0 {
        return Err("fs: file_mib must be > 0 and seq_block_kib a positive multiple of 4".into());
    }
    let work = WorkDir::create(Path::new(&p.dir))?;
    let mut m = Vec::new();
    let direct = data_phases(p, &work.path, &mut m)?;
    m.push(count("direct_io", "bool", if direct { 1.0 } else { 0.0 }));
    m.extend(meta_phase(p, &work.path)?);
    m.extend(fsync_phase(p, &work.path)?);
    drop(work);
    Ok(m)
}

/// Phases 1-4 on one data file; returns whether O_DIRECT was used.
fn data_phases(p: &FsParams, dir: &Path, m: &mut Vec<Metric>) -> Result<bool, String> {
    let block_u64 = p.seq_block_kib * 1024;
    let block = usize::try_from(block_u64).map_err(|e| e.to_string())?;
    let target = p.file_mib * MIB;
    let path = dir.join("seq.dat");
    let mut buf = AlignedBuf::new(block)?;
    fill_pattern(buf.as_mut(), 1);
    let ctx = |what: &str, e: io::Error| format!("fs: {what} {}: {e}", path.display());

    // 1. Sequential write. The first write tells whether O_DIRECT really works here.
    let (mut f, mut direct) = open_data(&path, p.direct, true).map_err(|e| ctx("open", e))?;
    let budget = Budget::ms(p.time_budget_ms);
    let t0 = Instant::now();
    let mut written = 0u64;
    while written < target {
        match f.write_all_at(buf.as_ref(), written) {
            Ok(()) => written += block_u64,
            Err(e) if direct && written == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                // Opened, but the file system refuses O_DIRECT I/O: go buffered and start over.
                (f, direct) = open_data(&path, false, true).map_err(|e| ctx("reopen", e))?;
                continue;
            }
            Err(e) => return Err(ctx("write", e)),
        }
        if budget.spent() {
            break;
        }
    }
    f.sync_all().map_err(|e| ctx("fsync", e))?;
    let t_write = t0.elapsed();
    drop_cache(&f, direct);
    drop(f);
    m.push(higher(
        "seq_write_mb_per_s",
        "MB/s",
        mb_per_s(written, t_write),
    ));
    m.push(count(
        "seq_mib_done",
        "MiB",
        count_f64(written) / count_f64(MIB),
    ));

    // 2. Sequential read of what was written.
    let (f, _) = open_data(&path, direct, false).map_err(|e| ctx("open", e))?;
    let budget = Budget::ms(p.time_budget_ms);
    let t0 = Instant::now();
    let mut read = 0u64;
    while read < written {
        f.read_exact_at(buf.as_mut(), read)
            .map_err(|e| ctx("read", e))?;
        read += block_u64;
        if budget.spent() {
            break;
        }
    }
    let t_read = t0.elapsed();
    m.push(higher("seq_read_mb_per_s", "MB/s", mb_per_s(read, t_read)));

    // 3. and 4. Random 4 KiB reads, then writes, over the whole file.
    let blocks = written / RAND_BLOCK_U64;
    let mut small = AlignedBuf::new(RAND_BLOCK)?;
    fill_pattern(small.as_mut(), 2);
    drop_cache(&f, direct);
    let mut rng = SplitMix64::new(0xF10);
    let (n, t) = timed_ops(p.rand_ops, p.time_budget_ms, || {
        let off = rng.below(blocks) * RAND_BLOCK_U64;
        f.read_exact_at(small.as_mut(), off)
            .map_err(|e| ctx("random read", e))
    })?;
    m.push(higher("rand_read_iops", "ops/s", per_s(n, t)));
    m.push(count("rand_read_ops_done", "ops", count_f64(n)));
    drop(f);

    let (f, _) = open_data(&path, direct, true).map_err(|e| ctx("open", e))?;
    let t0 = Instant::now();
    let (n, _) = timed_ops(p.rand_ops, p.time_budget_ms, || {
        let off = rng.below(blocks) * RAND_BLOCK_U64;
        f.write_all_at(small.as_ref(), off)
            .map_err(|e| ctx("random write", e))
    })?;
    f.sync_all().map_err(|e| ctx("fsync", e))?;
    let t = t0.elapsed();
    m.push(higher("rand_write_iops", "ops/s", per_s(n, t)));
    m.push(count("rand_write_ops_done", "ops", count_f64(n)));
    drop(f);
    std::fs::remove_file(&path).map_err(|e| ctx("remove", e))?;
    Ok(direct)
}

/// Run `op` up to `count` times or until `budget_ms` is spent; returns (done, elapsed).
fn timed_ops(
    count: u64,
    budget_ms: u64,
    mut op: impl FnMut() -> Result<(), String>,
) -> Result<(u64, Duration), String> {
    let budget = Budget::ms(budget_ms);
    let t0 = Instant::now();
    let mut done = 0u64;
    while done < count {
        op()?;
        done += 1;
        if budget.spent() {
            break;
        }
    }
    Ok((done, t0.elapsed()))
}

/// Phase 5: create, stat, unlink `meta_files` empty files (3 ops per file).
fn meta_phase(p: &FsParams, dir: &Path) -> Result<Vec<Metric>, String> {
    let sub = dir.join("meta");
    std::fs::create_dir(&sub).map_err(|e| format!("fs: mkdir {}: {e}", sub.display()))?;
    let name = |i: u64| sub.join(format!("f{i:08}"));
    let err = |what: &str, p: &Path, e: io::Error| format!("fs: {what} {}: {e}", p.display());

    let budget = Budget::ms(p.time_budget_ms);
    let t0 = Instant::now();
    let mut files = 0u64;
    while files < p.meta_files {
        let f = name(files);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&f)
            .map_err(|e| err("create", &f, e))?;
        files += 1;
        if budget.spent() {
            break;
        }
    }
    for i in 0..files {
        let f = name(i);
        std::fs::metadata(&f).map_err(|e| err("stat", &f, e))?;
    }
    for i in 0..files {
        let f = name(i);
        std::fs::remove_file(&f).map_err(|e| err("unlink", &f, e))?;
    }
    let t = t0.elapsed();
    std::fs::remove_dir(&sub).map_err(|e| err("rmdir", &sub, e))?;
    Ok(vec![
        higher("meta_ops_per_s", "ops/s", per_s(3 * files, t)),
        count("meta_files_done", "files", count_f64(files)),
    ])
}

/// Phase 6: buffered 4 KiB append, then a timed fsync, `fsync_ops` times.
fn fsync_phase(p: &FsParams, dir: &Path) -> Result<Vec<Metric>, String> {
    let path = dir.join("fsync.dat");
    let ctx = |what: &str, e: io::Error| format!("fs: {what} {}: {e}", path.display());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| ctx("create", e))?;
    let mut block = vec![0u8; RAND_BLOCK];
    fill_pattern(&mut block, 3);
    let budget = Budget::ms(p.time_budget_ms);
    let mut lat_us = Vec::new();
    let mut off = 0u64;
    while lat_us.len() < usize::try_from(p.fsync_ops).unwrap_or(usize::MAX) {
        f.write_all_at(&block, off).map_err(|e| ctx("write", e))?;
        off += RAND_BLOCK_U64;
        let t0 = Instant::now();
        f.sync_all().map_err(|e| ctx("fsync", e))?;
        lat_us.push(t0.elapsed().as_secs_f64() * 1e6);
        if budget.spent() {
            break;
        }
    }
    drop(f);
    std::fs::remove_file(&path).map_err(|e| ctx("remove", e))?;
    let done = u64::try_from(lat_us.len()).map_err(|e| e.to_string())?;
    let (p50, p99) = p50_p99(&mut lat_us);
    Ok(vec![
        lower("fsync_p50_us", "us", p50),
        lower("fsync_p99_us", "us", p99),
        count("fsync_ops_done", "ops", count_f64(done)),
    ])
}

fn mb_per_s(bytes: u64, t: Duration) -> f64 {
    per_s(bytes, t) / 1e6
}

/// Open the data file read-write, with O_DIRECT if asked and accepted. Returns whether
/// O_DIRECT is in force. EINVAL from open means the file system refuses O_DIRECT.
fn open_data(path: &Path, direct: bool, create: bool) -> io::Result<(File, bool)> {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(flags)
            .open(path)
    };
    if direct {
        match open(libc::O_DIRECT) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    open(0).map(|f| (f, false))
}

/// Without O_DIRECT, drop the file's cached pages so the next reads come from the device.
/// (The file was fsync'ed before, so there are no dirty pages to keep.)
fn drop_cache(f: &File, direct: bool) {
    if !direct {
        // Best effort: on tmpfs there is no device and nothing to drop.
        let _ = nix::fcntl::posix_fadvise(
            f.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
}

/// Non-constant data, so a compressing or deduplicating backend cannot shortcut the I/O.
fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for chunk in buf.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// The workload's private directory, removed with its contents on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(parent: &Path) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!("isobench-fs-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| {
            format!(
                "fs: cannot create a work directory in {}: {e}; point `dir` at a writable \
                 directory",
                parent.display()
            )
        })?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A zeroed heap buffer aligned to 4096 bytes, as O_DIRECT requires.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Result<Self, String> {
        let layout = Layout::from_size_align(len.max(1), ALIGN)
            .map_err(|e| format!("fs: bad buffer size {len}: {e}"))?;
        // SAFETY: the layout has a non-zero size (len.max(1)) and a power-of-two alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(format!("fs: cannot allocate a {len}-byte I/O buffer"));
        }
        Ok(AlignedBuf { ptr, layout })
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is a live, initialised (zeroed) allocation of layout.size() bytes, owned
        // by self; the shared borrow of self keeps it alive and unaliased by &mut.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in as_ref, and the exclusive borrow of self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was returned by alloc_zeroed with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned() {
        let mut b = AlignedBuf::new(8192).unwrap();
        assert_eq!(b.as_ref().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_mut().len(), 8192);
        assert!(b.as_ref().iter().all(|&x| x == 0));
    }

    #[test]
    fn workdir_is_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let w = WorkDir::create(parent.path()).unwrap();
        std::fs::write(w.path.join("x"), b"y").unwrap();
        let p = w.path.clone();
        drop(w);
        assert!(!p.exists());
    }

    #[test]
    fn missing_dir_is_a_clear_error() {
        let e = run(&FsParams {
            dir: "/nonexistent/isobench".into(),
            ..FsParams::default()
        })
        .unwrap_err();
        assert!(e.contains("point `dir`"), "{e}");
    }

    #[test]
    fn bad_block_size_is_rejected() {
        assert!(run(&FsParams {
            seq_block_kib: 6,
            ..FsParams::default()
        })
        .is_err());
    }
}
