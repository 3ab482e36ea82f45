//! The state directory: the run ledger (every resource recorded before it is created) and the
//! cleanup that validates every ledger entry before it releases it.

pub mod cleanup;
pub mod ledger;
