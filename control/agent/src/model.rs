//! What the agent knows (its node, the peers, its endpoints) turned into weftd's ports
//! and flows by the cluster compiler (`weft-cluster`), and the difference between two
//! flow sets as one small bundle. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};

use weft_cluster::{Cluster, ClusterError, ClusterSpec, Node, NodePlan, Pod};
use weft_flow::{Bundle, Flow, FlowFilter, FlowMod, Masked, Match};

use crate::schema::{EndpointRecord, NetConfig, NodeRecord};

/// The agent's cookie: `WEFT` in the high 32 bits; the low 32 bits are the VNI.
pub const COOKIE: u64 = 0x5745_4654_0000_0000;
/// The mask that selects the agent's flows (its high 32 bits).
pub const COOKIE_MASK: u64 = 0xffff_ffff_0000_0000;
/// The gateway port's weftd name.
pub const GATEWAY_PORT: &str = "gw0";
/// The gateway port's device in the node's namespace.
pub const GATEWAY_IFNAME: &str = "weft-gw";

/// The state the flows are made from.
#[derive(Clone, Debug)]
pub struct Model {
    /// This node's name.
    pub node: String,
    /// The network.
    pub net: NetConfig,
    /// The pod MTU in force.
    pub mtu: u16,
    /// This node as registered.
    pub me: NodeRecord,
    /// The other nodes, by name.
    pub peers: BTreeMap<String, NodeRecord>,
    /// This node's endpoints, by `<container_id>:<ifname>`.
    pub endpoints: BTreeMap<String, EndpointRecord>,
}

/// A flow's identity in its table: what a strict delete names.
pub type FlowId = (u8, u16, Match);

impl Model {
    /// The cluster as the compiler sees it. Peers whose subnet lies outside the pod CIDR
    /// or overlaps another's (of two that overlap, the first by name stays), and endpoints without an IPv4 address in this node's
    /// subnet, are left out (and named in the returned list), so one bad record never
    /// stops the others being programmed.
    pub fn cluster(&self) -> (Result<Cluster, ClusterError>, Vec<String>) {
        let mut skipped = Vec::new();
        let mut nodes = vec![Node {
            name: self.node.clone(),
            address: self.me.public_ip,
            pod_subnet: self.me.subnet,
            pod_subnet6: None,
        }];
        for (name, p) in &self.peers {
            let clash = nodes
                .iter()
                .find(|n| n.pod_subnet.contains(&p.subnet) || p.subnet.contains(&n.pod_subnet));
            if !self.net.pod_cidr.contains(&p.subnet)
                || clash.is_some()
                || p.encap != self.net.encap
            {
                skipped.push(format!(
                    "node '{name}' (subnet {}, encap {})",
                    p.subnet, p.encap
                ));
                continue;
            }
            nodes.push(Node {
                name: name.clone(),
                address: p.public_ip,
                pod_subnet: p.subnet,
                pod_subnet6: None,
            });
        }
        let mut pods = Vec::new();
        for (id, e) in &self.endpoints {
            match e.ipv4() {
                Some(a) if self.me.subnet.contains(&a) && a != nodes[0].gateway() => {
                    pods.push(Pod {
                        name: e.port.clone(),
                        node: self.node.clone(),
                        namespace: weftd_netns(std::path::Path::new(&e.netns)),
                        address: a,
                        address6: None,
                    });
                }
                _ => skipped.push(format!("endpoint '{id}'")),
            }
        }
        let spec = ClusterSpec {
            encap: self.net.encap,
            vni: self.net.vni,
            dst_port: self.net.port,
            mtu: self.mtu,
            pod_cidr: self.net.pod_cidr,
            nodes,
            pods,
        };
        let c = Cluster::new(spec).map(|c| {
            c.with_cookie(COOKIE | u64::from(self.net.vni))
                .with_gateway_port(GATEWAY_PORT, GATEWAY_IFNAME)
        });
        (c, skipped)
    }

    /// This node's plan.
    pub fn plan(&self) -> (Result<NodePlan, ClusterError>, Vec<String>) {
        let (c, skipped) = self.cluster();
        (c.and_then(|c| c.plan(&self.node)), skipped)
    }

    /// The flows that endpoint `id` adds to the plan (what the plan has with it and not
    /// without it), by table and then priority: what CHECK looks for in weftd.
    pub fn endpoint_flows(&self, id: &str) -> Result<Vec<Flow>, String> {
        if !self.endpoints.contains_key(id) {
            return Err(format!("no endpoint {id} on this node"));
        }
        let mut without = self.clone();
        without.endpoints.remove(id);
        let with = self.plan().0.map_err(|e| e.to_string())?;
        let rest = index(without.plan().0.map_err(|e| e.to_string())?.flows);
        let mut own: Vec<Flow> = with
            .flows
            .into_iter()
            .filter(|f| rest.get(&(f.table, f.priority, f.matches.clone())) != Some(f))
            .collect();
        own.sort_by_key(|f| (f.table, std::cmp::Reverse(f.priority)));
        Ok(own)
    }
}

/// What weftd's `netns=` gets: the name for a namespace in /var/run/netns, else the path.
pub fn weftd_netns(p: &std::path::Path) -> String {
    for dir in ["/var/run/netns", "/run/netns"] {
        if let Ok(rest) = p.strip_prefix(dir)
            && rest.components().count() == 1
        {
            return rest.to_string_lossy().into_owned();
        }
    }
    p.to_string_lossy().into_owned()
}

/// Flows by identity.
pub fn index(flows: impl IntoIterator<Item = Flow>) -> HashMap<FlowId, Flow> {
    flows
        .into_iter()
        .map(|f| ((f.table, f.priority, f.matches.clone()), f))
        .collect()
}

/// The bundle that turns `have` into `want`: an add for each new or changed flow, a
/// strict delete (limited to the agent's cookie) for each flow no longer wanted.
/// Unchanged flows are not touched, so they keep their counters. Deletes come first,
/// so a bundle never holds two flows of one identity.
pub fn diff(have: &HashMap<FlowId, Flow>, want: &HashMap<FlowId, Flow>) -> Bundle {
    let mut changes = Vec::new();
    let mut gone: Vec<&FlowId> = have.keys().filter(|k| !want.contains_key(*k)).collect();
    gone.sort_by_key(|k| (k.0, std::cmp::Reverse(k.1)));
    for (table, priority, matches) in gone {
        changes.push(FlowMod::DeleteStrict {
            filter: FlowFilter {
                table: Some(*table),
                cookie: Some(Masked {
                    value: COOKIE,
                    mask: COOKIE_MASK,
                }),
                priority: Some(*priority),
                matches: matches.clone(),
            },
        });
    }
    let mut new: Vec<&Flow> = want
        .iter()
        .filter(|(k, f)| have.get(*k) != Some(*f))
        .map(|(_, f)| f)
        .collect();
    new.sort_by_key(|f| (f.table, std::cmp::Reverse(f.priority)));
    for f in new {
        changes.push(FlowMod::Add { flow: f.clone() });
    }
    Bundle::new(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::NetConfig;
    use weft_cluster::Encap;

    fn model() -> Model {
        let net = NetConfig::parse(
            br#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"vxlan","vni":7}"#,
        )
        .unwrap();
        let rec = |ip: &str, s: &str| NodeRecord {
            public_ip: ip.parse().unwrap(),
            subnet: s.parse().unwrap(),
            gateway_mac: String::new(),
            encap: Encap::Vxlan,
        };
        let mut peers = BTreeMap::new();
        peers.insert("n2".to_string(), rec("198.18.0.2", "198.19.2.0/24"));
        let mut endpoints = BTreeMap::new();
        endpoints.insert(
            "c1:eth0".to_string(),
            EndpointRecord {
                ips: vec!["198.19.1.5/24".parse().unwrap()],
                mac: "0a:58:c6:13:01:05".into(),
                port: "p-c1-eth0".into(),
                netns: "/var/run/netns/x".into(),
                pod_namespace: None,
                pod_name: None,
            },
        );
        Model {
            node: "n1".into(),
            net,
            mtu: 1450,
            me: rec("198.18.0.1", "198.19.1.0/24"),
            peers,
            endpoints,
        }
    }

    #[test]
    fn an_endpoints_flows_are_what_it_adds_to_the_plan() {
        let m = model();
        let own = m.endpoint_flows("c1:eth0").unwrap();
        let text: Vec<String> = own.iter().map(|f| f.to_string()).collect();
        // The spoof guard of its port and the delivery to it, nothing of the peer's.
        assert!(
            text.iter()
                .any(|f| f.contains("in_port=p-c1-eth0") && f.contains("nw_src=198.19.1.5")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|f| f.contains("nw_dst=198.19.1.5 ")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|f| f.contains("actions=output:p-c1-eth0")),
            "{text:#?}"
        );
        assert!(!text.iter().any(|f| f.contains("198.19.2.0")), "{text:#?}");
        // Every one of them is in the whole plan, and none is without the endpoint.
        let all = index(m.plan().0.unwrap().flows);
        let mut without = m.clone();
        without.endpoints.clear();
        let rest = index(without.plan().0.unwrap().flows);
        for f in &own {
            let id = (f.table, f.priority, f.matches.clone());
            assert_eq!(all.get(&id), Some(f));
            assert_ne!(rest.get(&id), Some(f));
        }
        assert!(
            m.endpoint_flows("c9:eth0")
                .unwrap_err()
                .contains("no endpoint")
        );
    }

    #[test]
    fn the_plan_has_the_gateway_the_tunnel_and_the_agents_cookie() {
        let m = model();
        let (plan, skipped) = m.plan();
        let plan = plan.unwrap();
        assert!(skipped.is_empty());
        let ports: Vec<String> = plan.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            ports[0],
            "gw0 type=tap ifname=weft-gw mtu=1450 mac=0a:58:c6:13:01:01"
        );
        assert!(
            ports
                .iter()
                .any(|p| p.starts_with("tun0 type=vxlan local=198.18.0.1"))
        );
        assert!(plan.flows.iter().all(|f| f.cookie == COOKIE | 7));
        let text = plan.flows_text();
        assert!(text.contains("nw_dst=198.19.2.0/24"), "{text}");
        assert!(text.contains("set_field:198.18.0.2->tun_dst"), "{text}");
        assert!(text.contains("in_port=p-c1-eth0"), "{text}");
        assert!(text.contains("output:gw0"), "{text}");
    }

    #[test]
    fn a_bad_peer_is_left_out_and_named() {
        let mut m = model();
        m.peers.insert(
            "zz-bad".into(),
            NodeRecord {
                public_ip: "198.18.0.9".parse().unwrap(),
                subnet: "198.19.2.0/25".parse().unwrap(),
                gateway_mac: String::new(),
                encap: Encap::Vxlan,
            },
        );
        let (plan, skipped) = m.plan();
        assert!(plan.is_ok());
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("'zz-bad'"), "{skipped:?}");
    }

    #[test]
    fn a_peer_joining_or_leaving_is_a_small_bundle_and_nothing_else_changes() {
        let m = model();
        let before = index(m.plan().0.unwrap().flows);
        assert!(diff(&before, &before).changes.is_empty());
        let mut m2 = m.clone();
        m2.peers.insert(
            "n3".into(),
            NodeRecord {
                public_ip: "198.18.0.3".parse().unwrap(),
                subnet: "198.19.3.0/24".parse().unwrap(),
                gateway_mac: String::new(),
                encap: Encap::Vxlan,
            },
        );
        let after = index(m2.plan().0.unwrap().flows);
        let join = diff(&before, &after);
        // Its tunnel classifier, its route and its output flow.
        assert_eq!(join.changes.len(), 3, "{:?}", join.changes);
        assert!(
            join.changes
                .iter()
                .all(|c| matches!(c, FlowMod::Add { .. }))
        );
        let leave = diff(&after, &before);
        assert_eq!(leave.changes.len(), 3);
        for c in &leave.changes {
            let FlowMod::DeleteStrict { filter } = c else {
                panic!("{c:?}")
            };
            assert_eq!(filter.cookie.unwrap().mask, COOKIE_MASK);
        }
    }
}
