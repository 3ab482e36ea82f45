//! The guest's initramfs, written by isobench itself as a "newc" cpio archive (the format the
//! kernel unpacks, `Documentation/driver-api/early-userspace/buffer-format.rst`): no external
//! cpio tool, deterministic bytes (mtime 0, inode numbers in write order).
//!
//! Contents: the agent at `/bin/isobench-agent` (byte-identical to the host's binary, static, so
//! nothing else of the host's userspace) with `/init` a symlink to it, `/dev/console` and
//! `/dev/null`, empty `proc sys dev tmp mnt`, and
//! the guest kernel's modules as `/lib/modules/<name>.ko` (short paths: the task that lists them
//! travels hex-encoded on the kernel command line, which is at most 2048 bytes).
//!
//! An application server's launches (issue 12) get a second archive, [`build_with`]: the same
//! contents plus a staging tree that `host::rootfs::install_with_libs` filled with the server's
//! programs and their `ldd` closure, at their host paths, as for every tier with a rootfs. Only
//! those launches boot it, so no other guest grows.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::kernel::GuestKernel;
use crate::host::rootfs::{require_static, RootfsError, AGENT_IN_ROOTFS};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs entry {0}: {1}")]
    Entry(String, String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError {
    let path = path.to_path_buf();
    move |source| InitramfsError::Io { what, path, source }
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const TRAILER: &str = "TRAILER!!!";

/// A newc ("070701") cpio writer.
pub struct Cpio<W: Write> {
    w: W,
    ino: u32,
    offset: u64,
}

impl<W: Write> Cpio<W> {
    pub fn new(w: W) -> Self {
        Cpio {
            w,
            ino: 0,
            offset: 0,
        }
    }

    /// A directory; `path` is relative ("lib/modules"). Parents must come first.
    pub fn dir(&mut self, path: &str, perm: u32) -> std::io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Write the trailer and return the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.header(TRAILER, 0, 1, (0, 0), 0, 0)?;
        self.w.flush()?;
        Ok(self.w)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path == TRAILER || path.contains('\0') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad cpio path {path:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "file over 4 GiB")
        })?;
        self.ino += 1;
        self.header(path, mode, nlink, rdev, size, self.ino)?;
        self.put(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        (rmaj, rmin): (u32, u32),
        size: u32,
        ino: u32,
    ) -> std::io::Result<()> {
        let namesize = u32::try_from(name.len() + 1).expect("path length fits u32");
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: 8 hex digits each.
        let h = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, 0
        );
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    /// Pad to a multiple of 4 bytes.
    fn pad(&mut self) -> std::io::Result<()> {
        let n = (4 - (self.offset % 4)) % 4;
        self.put(&[0u8; 3][..usize::try_from(n).expect("n < 4")])
    }
}

/// One parsed entry (for tests and `isobench doctor`-style inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parse a newc archive up to its trailer.
pub fn parse(mut b: &[u8]) -> Result<Vec<Entry>, String> {
    let total = b.len();
    let mut out = vec![];
    let align = |consumed: usize| (4 - consumed % 4) % 4;
    loop {
        if b.len() < 110 || &b[..6] != b"070701" {
            return Err(format!("bad header at offset {}", total - b.len()));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_end = 110 + namesize;
        let name = std::str::from_utf8(b.get(110..name_end - 1).ok_or("short name")?)
            .map_err(|e| e.to_string())?
            .to_string();
        let data_start = name_end + align(total - b.len() + name_end);
        let data = b
            .get(data_start..data_start + size)
            .ok_or("short data")?
            .to_vec();
        if name == TRAILER {
            return Ok(out);
        }
        let end = data_start + size;
        let next = end + align(total - b.len() + end);
        out.push(Entry {
            name,
            mode,
            rdev,
            data,
        });
        b = b.get(next..).ok_or("truncated archive")?;
    }
}

/// Path of a module inside the initramfs (what `GuestSetup::modules` lists).
pub fn module_path(name: &str) -> String {
    format!("/lib/modules/{name}.ko")
}

/// File name of the initramfs for this agent and kernel: `initramfs-<hash>-<version>.cpio`,
/// the hash covering the agent and the modules.
pub fn cache_name(agent: &Path, kernel: &GuestKernel) -> Result<String, InitramfsError> {
    require_static(agent)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(agent)
        .map_err(io("reading", agent))?
        .hash(&mut h);
    for m in &kernel.modules {
        std::fs::read(&m.path)
            .map_err(io("reading", &m.path))?
            .hash(&mut h);
    }
    Ok(format!(
        "initramfs-{:016x}-{}.cpio",
        h.finish(),
        kernel.version
    ))
}

/// Size of the initramfs `build` would write, in bytes (file contents; headers are noise).
pub fn estimated_size(agent: &Path, kernel: &GuestKernel) -> Result<u64, InitramfsError> {
    let mut total = 0;
    let sources = std::iter::once(agent.to_path_buf());
    for p in sources.chain(kernel.modules.iter().map(|m| m.path.clone())) {
        total += std::fs::metadata(&p).map_err(io("stat", &p))?.len();
    }
    Ok(total)
}

/// The regular files under `root` as (path inside the archive, host path), sorted; a symlink
/// or any other kind of file is refused (a staging tree holds copies only).
pub fn tree_files(root: &Path) -> Result<Vec<(String, PathBuf)>, InitramfsError> {
    let mut out = vec![];
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).map_err(io("reading", &dir))? {
            let e = e.map_err(io("reading", &dir))?;
            let path = e.path();
            let kind = e.file_type().map_err(io("stat", &path))?;
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(root).expect("under root");
                out.push((format!("/{}", rel.display()), path));
            } else {
                return Err(InitramfsError::Entry(
                    path.display().to_string(),
                    "not a regular file or directory (a staging tree holds copies only)".into(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Size of the files under `root`, bytes (what [`build_with`] adds to the archive).
pub fn tree_size(root: &Path) -> Result<u64, InitramfsError> {
    let mut total = 0;
    for (_, p) in tree_files(root)? {
        total += std::fs::metadata(&p).map_err(io("stat", &p))?.len();
    }
    Ok(total)
}

/// Write the initramfs for `agent` and `kernel` to `dest` (temp file + rename). Returns the
/// module paths inside it, in load order.
pub fn build(
    agent: &Path,
    kernel: &GuestKernel,
    dest: &Path,
) -> Result<Vec<String>, InitramfsError> {
    build_with(agent, kernel, None, dest)
}

/// [`build`], plus every regular file of the staging tree `extra` at its path relative to
/// `extra` (read-only, executable: programs and libraries). A path the base archive already
/// has is refused.
pub fn build_with(
    agent: &Path,
    kernel: &GuestKernel,
    extra: Option<&Path>,
    dest: &Path,
) -> Result<Vec<String>, InitramfsError> {
    require_static(agent)?;
    let data = std::fs::read(agent).map_err(io("reading", agent))?;
    let mut files: Vec<(String, Vec<u8>, u32)> = vec![(AGENT_IN_ROOTFS.into(), data, 0o555)];
    let mut modules = vec![];
    for m in &kernel.modules {
        let data = std::fs::read(&m.path).map_err(io("reading", &m.path))?;
        let inside = module_path(&m.name);
        files.push((inside.clone(), data, 0o444));
        modules.push(inside);
    }
    if let Some(root) = extra {
        for (inside, host) in tree_files(root)? {
            if files.iter().any(|(p, _, _)| *p == inside) || inside == "/init" {
                return Err(InitramfsError::Entry(
                    inside,
                    "the staging tree would replace a file of the base initramfs".into(),
                ));
            }
            let data = std::fs::read(&host).map_err(io("reading", &host))?;
            files.push((inside, data, 0o555));
        }
    }
    let mut dirs: BTreeSet<String> = ["proc", "sys", "dev", "tmp", "mnt", "bin", "lib/modules"]
        .into_iter()
        .map(String::from)
        .collect();
    for (p, _, _) in &files {
        let mut a = Path::new(p.trim_start_matches('/')).parent();
        while let Some(d) = a.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            a = d.parent();
        }
    }
    let tmp = dest.with_extension("cpio.tmp");
    let f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    let entry_err =
        |what: &str, e: std::io::Error| InitramfsError::Entry(what.to_string(), e.to_string());
    let mut c = Cpio::new(std::io::BufWriter::new(f));
    // Sorted, so every parent precedes its children (the kernel does not create parents).
    for d in &dirs {
        let perm = if d == "tmp" { 0o1777 } else { 0o755 };
        c.dir(d, perm).map_err(|e| entry_err(d, e))?;
    }
    c.char_dev("dev/console", 0o600, 5, 1)
        .map_err(|e| entry_err("dev/console", e))?;
    c.char_dev("dev/null", 0o666, 1, 3)
        .map_err(|e| entry_err("dev/null", e))?;
    for (p, data, perm) in &files {
        c.file(p, *perm, data).map_err(|e| entry_err(p, e))?;
    }
    c.symlink("init", AGENT_IN_ROOTFS)
        .map_err(|e| entry_err("init", e))?;
    let w = c.finish().map_err(|e| entry_err("trailer", e))?;
    let f = w
        .into_inner()
        .map_err(|e| entry_err("flush", e.into_error()))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, dest).map_err(io("moving into place", dest))?;
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut c = Cpio::new(Vec::new());
        c.dir("dev", 0o755).unwrap();
        c.char_dev("dev/console", 0o600, 5, 1).unwrap();
        c.file("/bin/x", 0o555, b"hello").unwrap();
        c.symlink("init", "/bin/x").unwrap();
        c.file("empty", 0o444, b"").unwrap();
        c.finish().unwrap()
    }

    #[test]
    fn writes_newc_that_parses_back() {
        let b = sample();
        assert_eq!(b.len() % 4, 0);
        assert!(b.starts_with(b"070701"));
        let e = parse(&b).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "bin/x", "init", "empty"]);
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[1].mode, S_IFCHR | 0o600);
        assert_eq!(e[1].rdev, (5, 1));
        assert_eq!(e[2].data, b"hello");
        assert_eq!(e[3].mode & 0o170_000, S_IFLNK);
        assert_eq!(e[3].data, b"/bin/x");
        assert!(e[4].data.is_empty());
    }

    #[test]
    fn staging_tree_lists_copies_only() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("lib64")).unwrap();
        std::fs::write(r.join("usr/bin/server"), b"elf").unwrap();
        std::fs::write(r.join("lib64/ld.so"), b"loader!").unwrap();
        let got: Vec<String> = tree_files(r).unwrap().into_iter().map(|f| f.0).collect();
        assert_eq!(got, ["/lib64/ld.so", "/usr/bin/server"]);
        assert_eq!(tree_size(r).unwrap(), 10);
        std::os::unix::fs::symlink("server", r.join("usr/bin/link")).unwrap();
        let e = tree_files(r).unwrap_err().to_string();
        assert!(
            e.contains("usr/bin/link") && e.contains("copies only"),
            "{e}"
        );
    }

    #[test]
    fn deterministic_and_rejects_bad_paths() {
        assert_eq!(sample(), sample());
        let mut c = Cpio::new(Vec::new());
        assert!(c.file("TRAILER!!!", 0o444, b"").is_err());
        assert!(c.file("/", 0o444, b"").is_err());
    }

    #[test]
    fn gnu_cpio_lists_it_when_installed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.cpio");
        std::fs::write(&p, sample()).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-t", "-F"])
            .arg(&p)
            .output();
        match out {
            Ok(o) => {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                let list = String::from_utf8_lossy(&o.stdout);
                assert_eq!(
                    list.lines().collect::<Vec<_>>(),
                    ["dev", "dev/console", "bin/x", "init", "empty"]
                );
            }
            Err(e) => println!("SKIPPED gnu_cpio_lists_it_when_installed: cpio not runnable ({e})"),
        }
    }

    proptest::proptest! {
        #[test]
        fn any_files_roundtrip(files in proptest::collection::vec(("[a-z]{1,12}", proptest::collection::vec(proptest::num::u8::ANY, 0..64)), 0..8)) {
            let mut c = Cpio::new(Vec::new());
            for (i, (n, d)) in files.iter().enumerate() {
                c.file(&format!("{n}{i}"), 0o644, d).unwrap();
            }
            let b = c.finish().unwrap();
            let e = parse(&b).unwrap();
            proptest::prop_assert_eq!(e.len(), files.len());
            for (i, ((n, d), got)) in files.iter().zip(&e).enumerate() {
                proptest::prop_assert_eq!(&got.name, &format!("{n}{i}"));
                proptest::prop_assert_eq!(&got.data, d);
            }
        }
    }
}
