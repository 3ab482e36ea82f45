//! Wire constants of the `net` workload, shared by the agent (client) and the host's net peer
//! (`isobench::netpeer`, which documents the protocol).

/// Mode byte: stream sink.
pub const MODE_STREAM: u8 = b'S';
/// Mode byte: request/response.
pub const MODE_RR: u8 = b'R';
/// Largest request or response in request/response mode.
pub const MAX_MESSAGE: u32 = 1 << 20;
