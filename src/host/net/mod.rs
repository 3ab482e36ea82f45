//! Network resources on the host: device names and ownership marks (`netdev`), and address
//! blocks reserved per run in the state directory (`subnet`).

pub mod netdev;
pub mod subnet;
