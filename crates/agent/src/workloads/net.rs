//! `net`: TCP client of the host's peer (`isobench::netpeer`, whose module doc defines the wire
//! protocol: first byte `S` = stream sink, `R` = request/response).
//!
//! 1. Stream: one connection, `stream_block_kib` writes for `stream_duration_ms` or
//!    `stream_max_mib`, whichever comes first; then shutdown(write) and wait for the peer's count
//!    of bytes received. Throughput = bytes the peer received / time from first write to that
//!    reply (like iperf3's receiver figure).
//! 2. Request/response: one connection with TCP_NODELAY, `rr_transactions` transactions of
//!    `rr_request_bytes` out / `rr_response_bytes` back (netperf TCP_RR), capped by
//!    `time_budget_ms`; [`WARMUP`] transactions first are not recorded.
//!
//! Metrics: `stream_gbit_per_s`, `stream_mib_done`, `rr_latency_p50_us`, `rr_latency_p99_us`,
//! `rr_transactions_per_s`, `rr_transactions_done`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{count, count_f64, higher, lower, p50_p99, per_s, Budget};
use crate::protocol::Metric;
use crate::workload::NetParams;
use isobench_protocol::net::{MAX_MESSAGE, MODE_RR, MODE_STREAM};

/// Unrecorded transactions before the request/response measurement.
const WARMUP: u64 = 10;
/// How long to wait for the peer's answer once the client is done sending.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(p: &NetParams) -> Result<Vec<Metric>, String> {
    if p.peer.is_empty() {
        return Err("net: no peer address; set `peer` (host:port of a NetPeer)".into());
    }
    let sizes_ok = |n: u32| (1..=MAX_MESSAGE).contains(&n);
    if !sizes_ok(p.rr_request_bytes) || !sizes_ok(p.rr_response_bytes) || p.stream_block_kib == 0 {
        return Err(format!(
            "net: rr_request_bytes and rr_response_bytes must be in 1..={MAX_MESSAGE} and \
             stream_block_kib > 0"
        ));
    }
    let addr = resolve(&p.peer)?;
    let mut m = stream(p, addr)?;
    m.extend(request_response(p, addr)?);
    Ok(m)
}

fn resolve(peer: &str) -> Result<SocketAddr, String> {
    peer.to_socket_addrs()
        .map_err(|e| format!("net: cannot resolve peer {peer}: {e}"))?
        .next()
        .ok_or_else(|| format!("net: peer {peer} resolves to no address"))
}

fn connect(p: &NetParams, addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(p.connect_timeout_ms.max(1)))
        .map_err(|e| {
        format!("net: cannot connect to peer {addr}: {e}; is the NetPeer running?")
    })?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(REPLY_TIMEOUT)))
        .map_err(|e| format!("net: socket setup: {e}"))?;
    Ok(s)
}

fn stream(p: &NetParams, addr: SocketAddr) -> Result<Vec<Metric>, String> {
    let err = |what: &str, e: std::io::Error| format!("net: stream {what} ({addr}): {e}");
    let block_len = usize::try_from(p.stream_block_kib * 1024).map_err(|e| e.to_string())?;
    let block_u64 = p.stream_block_kib * 1024;
    let cap = p.stream_max_mib * (1 << 20);
    let block = vec![0xA5u8; block_len];
    let mut s = connect(p, addr)?;
    s.write_all(&[MODE_STREAM]).map_err(|e| err("write", e))?;

    let budget = Budget::ms(p.stream_duration_ms);
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < cap && !budget.spent() {
        s.write_all(&block).map_err(|e| err("write", e))?;
        sent += block_u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| err("shutdown", e))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)
        .map_err(|e| err("reading the peer's count", e))?;
    let t = t0.elapsed();
    let received = u64::from_le_bytes(reply);
    if received != sent {
        return Err(format!(
            "net: the peer received {received} bytes of {sent} sent; was a limit hit?"
        ));
    }
    Ok(vec![
        higher(
            "stream_gbit_per_s",
            "Gbit/s",
            per_s(received, t) * 8.0 / 1e9,
        ),
        count(
            "stream_mib_done",
            "MiB",
            count_f64(received) / count_f64(1 << 20),
        ),
    ])
}

fn request_response(p: &NetParams, addr: SocketAddr) -> Result<Vec<Metric>, String> {
    let err = |what: &str, e: std::io::Error| format!("net: request/response {what} ({addr}): {e}");
    let mut s = connect(p, addr)?;
    s.set_nodelay(true).map_err(|e| err("TCP_NODELAY", e))?;
    let mut hdr = vec![MODE_RR];
    hdr.extend(p.rr_request_bytes.to_le_bytes());
    hdr.extend(p.rr_response_bytes.to_le_bytes());
    s.write_all(&hdr).map_err(|e| err("header", e))?;
    let request = vec![0x3Cu8; usize::try_from(p.rr_request_bytes).map_err(|e| e.to_string())?];
    let mut response = vec![0u8; usize::try_from(p.rr_response_bytes).map_err(|e| e.to_string())?];

    let mut transact = |s: &mut TcpStream| -> Result<(), String> {
        s.write_all(&request).map_err(|e| err("write", e))?;
        s.read_exact(&mut response).map_err(|e| err("read", e))
    };
    for _ in 0..WARMUP {
        transact(&mut s)?;
    }
    let budget = Budget::ms(p.time_budget_ms);
    let mut lat_us =
        Vec::with_capacity(usize::try_from(p.rr_transactions.min(1 << 20)).unwrap_or(0));
    let t0 = Instant::now();
    let mut done = 0u64;
    while done < p.rr_transactions {
        let t = Instant::now();
        transact(&mut s)?;
        lat_us.push(t.elapsed().as_secs_f64() * 1e6);
        done += 1;
        if budget.spent() {
            break;
        }
    }
    let total = t0.elapsed();
    let _ = s.shutdown(Shutdown::Both);
    let (p50, p99) = p50_p99(&mut lat_us);
    Ok(vec![
        lower("rr_latency_p50_us", "us", p50),
        lower("rr_latency_p99_us", "us", p99),
        higher("rr_transactions_per_s", "ops/s", per_s(done, total)),
        count("rr_transactions_done", "ops", count_f64(done)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_peer_is_a_clear_error() {
        let e = run(&NetParams::default()).unwrap_err();
        assert!(e.contains("set `peer`"), "{e}");
    }

    #[test]
    fn refused_connection_is_an_error_not_a_hang() {
        // Bind then drop a listener: its port is then (almost surely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = run(&NetParams {
            peer: format!("127.0.0.1:{port}"),
            ..NetParams::default()
        })
        .unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
    }
}
