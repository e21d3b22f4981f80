//! Shared helpers for Weft's benchmarks.
//!
//! [`netns`] builds the two-pod test beds the namespace throughput benchmark
//! (`benches/netns_throughput.rs`) and the side-by-side comparison (`src/bin/compare.rs`)
//! measure: Weft, the kernel's VXLAN, Open vSwitch's userspace datapath and a plain veth,
//! and runs the load generator (`weft-loadgen`), `iperf3` and `ping` across them; its
//! [`netns::OvsNode`] starts Open vSwitch's daemons for those beds and for `flowbench`.
//! [`flowgen`] writes the Antrea-shaped flows and [`flowtable`] the results of
//! `src/bin/flowbench.rs`: flow programming, Weft's `weftctl` against `ovs-ofctl`.

pub mod flowgen;
pub mod flowtable;
pub mod netns;
