//! The CNI result: what ADD prints, what IPAM plugins print, what `prevResult` carries.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A result (1.0.0 / 1.1.0). IPAM plugins return the short form: no interfaces, no
/// interface index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The version of the result's format.
    #[serde(default)]
    pub cni_version: String,
    /// The interfaces made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// The addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// The routes set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteOut>,
    /// DNS settings for the container.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface of the result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Its MTU (1.1.0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The namespace it is in (`CNI_NETNS`); absent for host-side interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address of the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpNet,
    /// Its default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface that carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route of the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteOut {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_result_has_the_spec_form() {
        let r = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:57:00:00:00:05".into(),
                mtu: None,
                sandbox: Some("/proc/42/ns/net".into()),
            }],
            ips: vec![IpConfig {
                address: "198.19.1.5/24".parse().unwrap(),
                gateway: Some("198.19.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![RouteOut {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("198.19.1.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"02:57:00:00:00:05","sandbox":"/proc/42/ns/net"}],"ips":[{"address":"198.19.1.5/24","gateway":"198.19.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0","gw":"198.19.1.1"}]}"#
        );
        assert_eq!(serde_json::from_str::<CniResult>(&s).unwrap(), r);
    }

    #[test]
    fn host_locals_short_form_parses() {
        let r: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"198.19.1.2/24","gateway":"198.19.1.1"}],"dns":{}}"#,
        )
        .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].interface, None);
        assert!(r.interfaces.is_empty());
    }
}
