//! Host utilities: facts about the machine, cgroups, the rootfs builder, file-system removal,
//! `/proc` readers and network devices/addresses. Backends share these instead of borrowing
//! each other's helpers.

pub mod cgroup;
pub mod facts;
pub mod fs;
pub mod net;
pub mod proc;
pub mod rootfs;
