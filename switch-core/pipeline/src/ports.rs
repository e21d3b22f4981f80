//! The switch's port map as the pipeline sees it: number ↔ name, and the kind of each
//! port (tap or tunnel), which `flood` and `normal` need for split horizon.
//!
//! The map is part of the published [`Pipeline`](super::Pipeline) snapshot: flows name
//! ports by name and are resolved against it at install time, and a new map (a port
//! added or deleted) is published as a new pipeline version, so a worker's cached
//! results never refer to a port map other than the one they were computed with.

use std::collections::HashMap;

use weft_flow::PortRef;

use super::error::InstallErrorKind;

/// What kind of port a port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// A local TAP device (a pod, VM or namespace).
    Tap,
    /// A tunnel (VXLAN, Geneve, IP-in-IP) toward other nodes.
    Tunnel,
}

/// One port of the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// OpenFlow-style port number (`ofport`), never 0.
    pub number: u32,
    /// Unique name.
    pub name: String,
    /// Tap or tunnel.
    pub kind: PortKind,
    /// For a TAP port: the VNI (`tun_id`) of the network it belongs to, like an OVS
    /// access port's VLAN tag: `normal` and `flood` send it only frames of that VNI.
    /// `None`: every frame (one network per node).
    pub tag: Option<u32>,
}

/// Why a port could not be added to a [`PortMap`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortMapError {
    /// The number is taken.
    #[error("port number {0} is already in use")]
    NumberInUse(u32),
    /// The name is taken.
    #[error("port name '{0}' is already in use")]
    NameInUse(String),
    /// Port number 0 is reserved.
    #[error("port number 0 is reserved")]
    ZeroNumber,
}

/// Ports by number (sorted, for binary search and ordered flooding) and by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortMap {
    ports: Vec<PortInfo>,
    by_name: HashMap<String, u32>,
    /// Ports that exist but are down (their device could not be opened): flows may
    /// name them, but nothing is sent to them, so they are in no flood.
    reserved: HashMap<String, u32>,
}

impl PortMap {
    /// An empty map.
    pub fn new() -> PortMap {
        PortMap::default()
    }

    /// Adds a port.
    pub fn insert(&mut self, number: u32, name: &str, kind: PortKind) -> Result<(), PortMapError> {
        if number == 0 {
            return Err(PortMapError::ZeroNumber);
        }
        if self.by_name.contains_key(name) {
            return Err(PortMapError::NameInUse(name.to_string()));
        }
        let at = match self.ports.binary_search_by_key(&number, |p| p.number) {
            Ok(_) => return Err(PortMapError::NumberInUse(number)),
            Err(at) => at,
        };
        self.ports.insert(
            at,
            PortInfo {
                number,
                name: name.to_string(),
                kind,
                tag: None,
            },
        );
        self.by_name.insert(name.to_string(), number);
        Ok(())
    }

    /// Builder form of [`PortMap::insert`].
    pub fn with(
        mut self,
        number: u32,
        name: &str,
        kind: PortKind,
    ) -> Result<PortMap, PortMapError> {
        self.insert(number, name, kind)?;
        Ok(self)
    }

    /// Removes a port by number; returns it.
    pub fn remove(&mut self, number: u32) -> Option<PortInfo> {
        let at = self
            .ports
            .binary_search_by_key(&number, |p| p.number)
            .ok()?;
        let p = self.ports.remove(at);
        self.by_name.remove(&p.name);
        Some(p)
    }

    /// The port with this number.
    #[inline]
    pub fn get(&self, number: u32) -> Option<&PortInfo> {
        self.ports
            .binary_search_by_key(&number, |p| p.number)
            .ok()
            .map(|i| &self.ports[i])
    }

    /// The kind of the port with this number.
    #[inline]
    pub fn kind(&self, number: u32) -> Option<PortKind> {
        self.get(number).map(|p| p.kind)
    }

    /// The number of the port with this name (a port that is down has one too).
    pub fn number(&self, name: &str) -> Option<u32> {
        self.by_name
            .get(name)
            .or_else(|| self.reserved.get(name))
            .copied()
    }

    /// Reserves a name and number for a port that is down: flows may name it (and
    /// resolve to `number`), but it is not a port of the map (no kind, no flood).
    pub fn reserve(&mut self, number: u32, name: &str) {
        self.reserved.insert(name.to_string(), number);
    }

    /// Every port, by ascending number.
    pub fn iter(&self) -> impl Iterator<Item = &PortInfo> + '_ {
        self.ports.iter()
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Sets (or clears) the VNI tag of a port (see [`PortInfo::tag`]).
    pub fn set_tag(&mut self, number: u32, tag: Option<u32>) {
        if let Ok(at) = self.ports.binary_search_by_key(&number, |p| p.number) {
            self.ports[at].tag = tag;
        }
    }

    /// The ports a flood of a frame of VNI `vni` from `in_port` reaches: every port but
    /// `in_port`, no tunnel port when `in_port` is a tunnel (split horizon), and no TAP
    /// port tagged with another VNI. By ascending number.
    pub fn flood_ports(&self, in_port: u32, vni: u64) -> impl Iterator<Item = &PortInfo> + '_ {
        let from_tunnel = self.kind(in_port) == Some(PortKind::Tunnel);
        self.ports.iter().filter(move |p| {
            p.number != in_port
                && !(from_tunnel && p.kind == PortKind::Tunnel)
                && p.tag.is_none_or(|t| u64::from(t) == vni)
        })
    }

    /// A flow's port reference as a number. Numbers are taken as they are (output to a
    /// number that is not in the map is a counted drop at run time); names must exist.
    pub(crate) fn resolve(&self, p: &PortRef) -> Result<u32, InstallErrorKind> {
        match p {
            PortRef::Number(n) => Ok(*n),
            PortRef::Name(n) => self
                .number(n)
                .ok_or_else(|| InstallErrorKind::UnknownPort(n.clone())),
        }
    }
}
