//! The switch's counters as plain data: what [`Switch::stats`](crate::Switch::stats)
//! fills for one scrape. `weftd` renders them as Prometheus metrics; nothing here
//! knows about the exposition format.

/// The counters of one port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// The port's name.
    pub name: String,
    /// The port's number.
    pub ofport: u32,
    /// `tap`, `vxlan`, `geneve` or `ipip`.
    pub port_type: &'static str,
    /// Whether the port is up (its device or sockets open); a port that is down has
    /// no counters.
    pub up: bool,
    /// Frames received from the port.
    pub rx_packets: u64,
    /// Bytes received from the port.
    pub rx_bytes: u64,
    /// Frames sent to the port.
    pub tx_packets: u64,
    /// Bytes sent to the port.
    pub tx_bytes: u64,
    /// Frames dropped at this port, by reason.
    pub drops: Vec<(String, u64)>,
}

/// The counters of one flow table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// The table's number.
    pub id: u8,
    /// Flows installed.
    pub flows: u64,
    /// Lookups in this table.
    pub lookups: u64,
    /// Lookups that matched a flow.
    pub matches: u64,
    /// Lookups that matched nothing.
    pub misses: u64,
}

/// Everything the metrics endpoint shows, filled by the switch at each scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// One entry per port.
    pub ports: Vec<PortStats>,
    /// One entry per table in use.
    pub tables: Vec<TableStats>,
    /// Exact-match cache hits (all workers).
    pub cache_hits: u64,
    /// Exact-match cache misses (all workers).
    pub cache_misses: u64,
    /// Datapath drops by reason (all workers).
    pub drops: Vec<(String, u64)>,
    /// Packets dropped by `drop` flows, per table, priority and cookie: which flows
    /// the `explicit_drop` of [`StatsSnapshot::drops`] came from.
    pub flow_drops: Vec<weft_pipeline::FlowDropCount>,
    /// The published pipeline version.
    pub pipeline_version: u64,
    /// Live entries of the MAC table of `normal`.
    pub mac_entries: u64,
    /// Capacity of the MAC table.
    pub mac_capacity: u64,
    /// Entries evicted from a full set of the MAC table.
    pub mac_evictions: u64,
    /// Hosts that moved to another port.
    pub mac_moves: u64,
    /// VXLAN/Geneve go over the tunnel-GSO underlay port (`tunnel_gso` asked for and the
    /// kernel has it), not the tunnels' sockets only.
    pub tunnel_gso: bool,
}
