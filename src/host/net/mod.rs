//! Network resources on the host: device names and ownership marks (`netdev`), and address
//! blocks reserved per run in the state directory (`subnet`).

pub mod netdev;
pub mod subnet;

use std::path::Path;

/// Delete network device `name` if it exists (a veth takes its peer with it). Ok(false) when it
/// is already gone, including when it vanished on its own meanwhile (a dying network namespace
/// removes its veth pairs asynchronously).
pub fn remove_link(name: &str) -> Result<bool, String> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.starts_with('.') {
        return Err(format!(
            "ledger names an invalid network device {name:?}: edit the ledger by hand"
        ));
    }
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(false);
    }
    let out = std::process::Command::new("ip")
        .args(["link", "del", "dev", name])
        .output()
        .map_err(|e| format!("running `ip link del {name}`: {e} (install iproute2)"))?;
    if out.status.success() {
        Ok(true)
    } else if !Path::new("/sys/class/net").join(name).exists() {
        Ok(false)
    } else {
        Err(format!(
            "`ip link del {name}` failed: {}; remove it by hand",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Is `s` a name nft accepts for a table or family (letters, digits, `_`, `-`)?
pub fn valid_nft_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && s.as_bytes()[0].is_ascii_alphabetic()
}

/// Delete `iptables -t table -D chain rule...` if that rule is there. Ok(false) when it is not.
pub fn remove_iptables_rule(table: &str, chain: &str, rule: &[String]) -> Result<bool, String> {
    if !valid_nft_name(table) || !valid_nft_name(chain) {
        return Err(format!(
            "ledger names an invalid iptables chain {table:?} {chain:?}: edit the ledger by hand"
        ));
    }
    let run = |op: &str| {
        std::process::Command::new("iptables")
            .args(["-w", "-t", table, op, chain])
            .args(rule)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running `iptables {op} {chain}`: {e} (install iptables)"))
    };
    if !run("-C")?.status.success() {
        return Ok(false);
    }
    let out = run("-D")?;
    if out.status.success() {
        Ok(true)
    } else {
        Err(format!(
            "`iptables -t {table} -D {chain} {}` failed: {}; remove it by hand",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
