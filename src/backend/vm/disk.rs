//! The VM tiers' fs data path: a raw ext4 image file in the run's scratch directory (the same
//! host filesystem the other tiers write to), attached as virtio-blk and mounted at
//! [`GUEST_MOUNT`] by the agent.
//!
//! The image is sparse and formatted with `mkfs.ext4 -F -q` with lazy initialisation off, so the
//! guest's kernel starts no background inode-table zeroing in the middle of a measurement. QEMU
//! opens it with `cache=none` (O_DIRECT on the host: the host's page cache does not turn the
//! guest's cold reads into memory copies) and `aio=io_uring` where both the kernel and the QEMU
//! build have it, `aio=threads` otherwise.
//!
//! Between launches the filesystem is reused: the agent removes its private work directory and
//! the guest unmounts before powering off. A launch that did not end cleanly marks the image
//! dirty and the next one reformats it first.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest device of the first virtio-blk disk.
pub const GUEST_DEVICE: &str = "/dev/vda";
/// Where the agent mounts it (and where the fs workload runs).
pub const GUEST_MOUNT: &str = "/data";
/// Image size unless `--set disk_mib=` says otherwise.
pub const DEFAULT_DISK_MIB: u64 = 1024;
/// Journal, inode tables and the metadata phase's files, besides the sequential file.
pub const FS_OVERHEAD_MIB: u64 = 128;
/// The smallest image isobench makes.
pub const MIN_DISK_MIB: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 is not installed: apt-get install e2fsprogs")]
    NoMkfs,
    #[error("`mkfs.ext4 {args}` failed: {detail}; check the free space of the state directory")]
    Mkfs { args: String, detail: String },
    #[error(
        "the fs workload's {file_mib} MiB file does not fit the {disk_mib} MiB VM disk (it needs \
         {FS_OVERHEAD_MIB} MiB besides the file): give --set disk_mib={need} or a smaller file_mib"
    )]
    TooSmall {
        file_mib: u64,
        disk_mib: u64,
        need: u64,
    },
}

/// `mkfs.ext4`'s arguments for `image` (pure, unit-tested).
pub fn mkfs_args(image: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "-q".into(),
        "-L".into(),
        "isobench".into(),
        // Initialise inode tables and journal now, on the host, not lazily in the guest.
        "-E".into(),
        "lazy_itable_init=0,lazy_journal_init=0".into(),
        image.display().to_string(),
    ]
}

/// Refuse a file that, with the filesystem's own overhead, does not fit `disk_mib`.
pub fn check_fits(file_mib: u64, disk_mib: u64) -> Result<(), DiskError> {
    let need = file_mib.saturating_add(FS_OVERHEAD_MIB);
    if need > disk_mib {
        return Err(DiskError::TooSmall {
            file_mib,
            disk_mib,
            need: need.max(MIN_DISK_MIB),
        });
    }
    Ok(())
}

/// (Re)create `image` as a sparse `mib` MiB file holding a fresh ext4 filesystem. Truncating
/// first returns a previous image's blocks to the host, so every format starts equally sparse.
pub fn format(image: &Path, mib: u64) -> Result<(), DiskError> {
    let io = |what: &'static str| {
        let path = image.to_path_buf();
        move |source| DiskError::Io { what, path, source }
    };
    let f = std::fs::File::create(image).map_err(io("creating"))?;
    f.set_len(mib << 20).map_err(io("sizing"))?;
    drop(f);
    let args = mkfs_args(image);
    let out = match Command::new("mkfs.ext4").args(&args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DiskError::NoMkfs),
        Err(source) => {
            return Err(DiskError::Io {
                what: "running mkfs.ext4 on",
                path: image.into(),
                source,
            })
        }
    };
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Can files in `dir` be opened with O_DIRECT (QEMU's `cache=none`)? tmpfs, for one, refuses.
pub fn supports_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".isobench-odirect-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The `aio=` backend: io_uring when the kernel lets this process set up a ring and the QEMU
/// binary links liburing, else threads (always available).
pub fn pick_aio(qemu: &Path) -> &'static str {
    if io_uring_works() && links_liburing(qemu) {
        "io_uring"
    } else {
        "threads"
    }
}

fn io_uring_works() -> bool {
    // struct io_uring_params is 120 bytes; zeroed is a valid request for a 1-entry ring.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) reads and writes only the 120-byte params buffer, which outlives
    // the call, and returns a new fd (closed below) or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1u32,
            params.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    match i32::try_from(fd) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: fd was just returned by io_uring_setup and is owned by nobody else.
            unsafe { libc::close(fd) };
            true
        }
        _ => false,
    }
}

/// Whether the binary names liburing among its libraries (a plain byte search of the file:
/// enough for the dynamic section, and no dependency on ldd).
fn links_liburing(binary: &Path) -> bool {
    std::fs::read(binary).is_ok_and(|b| b.windows(11).any(|w| w == b"liburing.so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkfs_is_eager_and_forced() {
        let a = mkfs_args(Path::new("/s/disk.ext4")).join(" ");
        assert_eq!(
            a,
            "-F -q -L isobench -E lazy_itable_init=0,lazy_journal_init=0 /s/disk.ext4"
        );
    }

    #[test]
    fn file_must_fit_with_overhead() {
        assert!(check_fits(256, 1024).is_ok());
        assert!(check_fits(896, 1024).is_ok());
        let e = check_fits(1000, 1024).unwrap_err().to_string();
        assert!(e.contains("disk_mib=1128"), "{e}");
    }

    #[test]
    fn formats_a_sparse_ext4_image() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            println!("SKIPPED formats_a_sparse_ext4_image: mkfs.ext4 not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.ext4");
        format(&img, 64).unwrap();
        let md = std::fs::metadata(&img).unwrap();
        assert_eq!(md.len(), 64 << 20);
        // ext4 superblock magic 0xEF53 at byte 1024 + 0x38.
        let b = std::fs::read(&img).unwrap();
        assert_eq!(&b[1024 + 0x38..1024 + 0x3a], &[0x53, 0xEF]);
        // Reformatting over an existing image works too.
        format(&img, 64).unwrap();
    }
}
