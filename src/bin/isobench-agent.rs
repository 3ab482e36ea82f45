//! `isobench-agent`: the one workload binary, byte-identical in every tier.
fn main() {
    isobench_agent::main()
}
