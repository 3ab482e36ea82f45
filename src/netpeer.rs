//! The host side of the `net` workload: a small, bounded TCP server that the agent connects to.
//!
//! # Wire protocol (one port)
//! The first byte the client sends on a connection selects the mode:
//!
//! - `S` — **stream sink**. The client sends bytes, then shuts down its write half. The peer
//!   reads and discards everything; at EOF it replies with the number of bytes it received after
//!   the mode byte (u64, little endian) and closes. The client stops its clock on that reply, so
//!   the throughput counts what arrived, not what sat in socket buffers.
//! - `R` — **request/response**. The client sends the request size and the response size (u32
//!   little endian each, 1..=[`MAX_MESSAGE`]). Then, until the client closes, the peer reads one
//!   request of exactly that size and writes one response of exactly that size (like netperf's
//!   TCP_RR). Both sides set TCP_NODELAY.
//!
//! Any other first byte closes the connection.
//!
//! # Bounds
//! Every connection is bounded by [`NetPeerLimits`]: a wall-clock lifetime, a byte count (both
//! directions), an idle timeout, and a cap on concurrent connections; a connection over any of
//! them is closed. [`NetPeer::stop`] (and drop) sets a flag that the accept loop and every
//! connection look at within [`TICK`], and joins all threads.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use isobench_protocol::net::{MAX_MESSAGE, MODE_RR, MODE_STREAM};
/// How often blocked threads look at the stop flag and their deadlines.
pub const TICK: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum NetPeerError {
    #[error("net peer: cannot bind {addr}: {source}; choose a free port or use port 0")]
    Bind { addr: String, source: io::Error },
    #[error("net peer: cannot set up the listening socket: {0}")]
    Setup(io::Error),
    #[error("net peer: cannot start the server thread: {0}")]
    Spawn(io::Error),
}

/// Limits on each connection and on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPeerLimits {
    /// A connection is closed this long after it was accepted.
    pub max_conn_duration: Duration,
    /// A connection is closed after this many bytes, both directions together.
    pub max_conn_bytes: u64,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Connections beyond this many at once are closed at accept.
    pub max_connections: usize,
}

impl Default for NetPeerLimits {
    fn default() -> Self {
        NetPeerLimits {
            max_conn_duration: Duration::from_secs(120),
            max_conn_bytes: 1 << 40,
            idle_timeout: Duration::from_secs(15),
            max_connections: 16,
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    bytes_received: AtomicU64,
}

/// A running peer; stops and joins its threads on [`NetPeer::stop`] or drop.
#[derive(Debug)]
pub struct NetPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl NetPeer {
    /// Bind `bind_addr` (port 0 picks a free port) and serve with default limits.
    pub fn start(
        bind_addr: impl ToSocketAddrs + std::fmt::Display,
    ) -> Result<NetPeer, NetPeerError> {
        Self::start_with(bind_addr, NetPeerLimits::default())
    }

    pub fn start_with(
        bind_addr: impl ToSocketAddrs + std::fmt::Display,
        limits: NetPeerLimits,
    ) -> Result<NetPeer, NetPeerError> {
        let listener = TcpListener::bind(&bind_addr).map_err(|source| NetPeerError::Bind {
            addr: bind_addr.to_string(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(NetPeerError::Setup)?;
        let addr = listener.local_addr().map_err(NetPeerError::Setup)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("isobench-netpeer".into())
                .spawn(move || accept_loop(&listener, limits, &stop, &stats))
                .map_err(NetPeerError::Spawn)?
        };
        Ok(NetPeer {
            addr,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The address the peer listens on (give this to the agent as `peer`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Bytes received on finished connections.
    pub fn bytes_received(&self) -> u64 {
        self.stats.bytes_received.load(Ordering::Relaxed)
    }

    /// Stop accepting, close every connection, join all threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NetPeer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: &TcpListener,
    limits: NetPeerLimits,
    stop: &Arc<AtomicBool>,
    stats: &Arc<Stats>,
) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let tick_ms = u16::try_from(TICK.as_millis()).unwrap_or(u16::MAX);
    while !stop.load(Ordering::Relaxed) {
        // Wait for a connection or a tick, so stop is seen promptly and accept is immediate.
        let mut fds = [nix::poll::PollFd::new(
            listener.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(nix::poll::poll(&mut fds, tick_ms), Ok(n) if n > 0) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        conns.retain(|h| !h.is_finished());
        if conns.len() >= limits.max_connections {
            tracing::warn!("net peer: connection limit reached, closing a new connection");
            continue;
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (stop, stats) = (stop.clone(), stats.clone());
        let spawned = std::thread::Builder::new()
            .name("isobench-netpeer-conn".into())
            .spawn(move || {
                let mut c = Conn::new(stream, limits, stop);
                if let Err(e) = c.serve() {
                    tracing::debug!("net peer: connection ended: {e}");
                }
                stats
                    .bytes_received
                    .fetch_add(c.received, Ordering::Relaxed);
            });
        match spawned {
            Ok(h) => conns.push(h),
            Err(e) => tracing::warn!("net peer: cannot start a connection thread: {e}"),
        }
    }
    for h in conns {
        let _ = h.join();
    }
}

/// One connection and its bounds.
struct Conn {
    s: TcpStream,
    limits: NetPeerLimits,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    last_activity: Instant,
    received: u64,
    sent: u64,
}

impl Conn {
    fn new(s: TcpStream, limits: NetPeerLimits, stop: Arc<AtomicBool>) -> Conn {
        let now = Instant::now();
        Conn {
            s,
            limits,
            stop,
            deadline: now + limits.max_conn_duration,
            last_activity: now,
            received: 0,
            sent: 0,
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        self.s.set_nonblocking(false)?;
        self.s.set_read_timeout(Some(TICK))?;
        self.s.set_write_timeout(Some(self.limits.idle_timeout))?;
        self.s.set_nodelay(true)?;
        let mut mode = [0u8; 1];
        if !self.read_full(&mut mode)? {
            return Ok(());
        }
        match mode[0] {
            MODE_STREAM => self.sink(),
            MODE_RR => self.request_response(),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown mode byte {other:#04x}"),
            )),
        }
    }

    /// Read and discard to EOF, then report the count.
    fn sink(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut count = 0u64;
        loop {
            let n = self.read_some(&mut buf)?;
            if n == 0 {
                break;
            }
            count += u64::try_from(n).unwrap_or(u64::MAX);
        }
        self.write_all(&count.to_le_bytes())
    }

    fn request_response(&mut self) -> io::Result<()> {
        let mut hdr = [0u8; 8];
        if !self.read_full(&mut hdr)? {
            return Ok(());
        }
        let size = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let (req, resp) = (size(&hdr[..4]), size(&hdr[4..]));
        if !(1..=MAX_MESSAGE).contains(&req) || !(1..=MAX_MESSAGE).contains(&resp) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request/response sizes {req}/{resp} outside 1..={MAX_MESSAGE}"),
            ));
        }
        let to_usize = |n: u32| usize::try_from(n).map_err(|e| io::Error::other(e.to_string()));
        let mut request = vec![0u8; to_usize(req)?];
        let response = vec![0x5Au8; to_usize(resp)?];
        while self.read_full(&mut request)? {
            self.write_all(&response)?;
        }
        Ok(())
    }

    /// Fill `buf` completely; Ok(false) on a clean EOF before the first byte.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut at = 0;
        while at < buf.len() {
            let n = self.read_some(&mut buf[at..])?;
            if n == 0 {
                return if at == 0 {
                    Ok(false)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            at += n;
        }
        Ok(true)
    }

    /// One read, waking every TICK to check the stop flag and the bounds.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check_bounds()?;
            match self.s.read(buf) {
                Ok(n) => {
                    self.received += u64::try_from(n).unwrap_or(u64::MAX);
                    self.last_activity = Instant::now();
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.last_activity.elapsed() > self.limits.idle_timeout {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.check_bounds()?;
        self.s.write_all(buf)?;
        self.sent += u64::try_from(buf.len()).unwrap_or(u64::MAX);
        self.last_activity = Instant::now();
        Ok(())
    }

    fn check_bounds(&self) -> io::Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "peer stopping"));
        }
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection lifetime limit",
            ));
        }
        if self.received + self.sent > self.limits.max_conn_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "connection byte limit",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(p: &NetPeer) -> TcpStream {
        let s = TcpStream::connect(p.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    #[test]
    fn stream_sink_reports_the_count() {
        let p = NetPeer::start("127.0.0.1:0").unwrap();
        let mut s = connect(&p);
        s.write_all(&[MODE_STREAM]).unwrap();
        s.write_all(&vec![1u8; 100_000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut n = [0u8; 8];
        s.read_exact(&mut n).unwrap();
        assert_eq!(u64::from_le_bytes(n), 100_000);
        drop(s);
        p.stop();
    }

    #[test]
    fn request_response_echoes_fixed_sizes() {
        let p = NetPeer::start("127.0.0.1:0").unwrap();
        let mut s = connect(&p);
        let mut hdr = vec![MODE_RR];
        hdr.extend(3u32.to_le_bytes());
        hdr.extend(7u32.to_le_bytes());
        s.write_all(&hdr).unwrap();
        for _ in 0..3 {
            s.write_all(b"abc").unwrap();
            let mut r = [0u8; 7];
            s.read_exact(&mut r).unwrap();
        }
        drop(s);
        assert_eq!(p.connections(), 1);
    }

    #[test]
    fn byte_limit_closes_the_connection() {
        let limits = NetPeerLimits {
            max_conn_bytes: 10_000,
            ..NetPeerLimits::default()
        };
        let p = NetPeer::start_with("127.0.0.1:0", limits).unwrap();
        let mut s = connect(&p);
        s.write_all(&[MODE_STREAM]).unwrap();
        // The peer closes after 10 kB: later writes or the final read must fail.
        let mut failed = false;
        for _ in 0..1000 {
            if s.write_all(&[0u8; 65536]).is_err() {
                failed = true;
                break;
            }
        }
        if !failed {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut n = [0u8; 8];
            failed = s.read_exact(&mut n).is_err();
        }
        assert!(failed, "the peer served past its byte limit");
    }

    #[test]
    fn stop_returns_with_an_idle_client_connected() {
        let p = NetPeer::start("127.0.0.1:0").unwrap();
        let _s = connect(&p);
        let t0 = Instant::now();
        p.stop();
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn bind_error_says_what_to_do() {
        let e = NetPeer::start("256.0.0.1:0").unwrap_err().to_string();
        assert!(e.contains("cannot bind"), "{e}");
    }
}
