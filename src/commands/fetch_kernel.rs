//! `isobench fetch-kernel`: download Debian's guest kernel and modules into the cache.

use anyhow::Context;

use super::options::cache_dir;
use crate::cli::CommonArgs;
use crate::exit_codes::ExitCode;
use crate::outln;

pub fn run(common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let k = crate::backend::vm::kernel::fetch(&cache_dir(common))
        .context("fetching the guest kernel")?;
    outln!(
        "guest kernel {} cached at {}",
        k.version,
        k.vmlinuz.display()
    );
    Ok(ExitCode::Success)
}
