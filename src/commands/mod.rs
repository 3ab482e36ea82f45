//! One module per subcommand: each turns its arguments into plain config, calls the library
//! and returns the exit code.

pub mod doctor;
