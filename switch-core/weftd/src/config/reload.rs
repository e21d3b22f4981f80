//! What a reload (`SIGHUP`) changes: the ports it adds, removes or changes, whether the
//! flows changed, and the settings that take effect only at the next start.

use std::collections::HashMap;
use std::fmt;

use weft_flow::Flow;
use weft_flow::port::PortSpec;

use super::Config;

impl Config {
    /// What changed from `self` (the running configuration) to `new` (a reload).
    pub fn changes(&self, new: &Config) -> ConfigChanges {
        let needs_restart = new.clone().keep_restart_settings(self);
        ConfigChanges {
            ports: diff_ports(&self.ports, &new.ports),
            flows_changed: self.flows_file != new.flows_file
                || !same_flows(&self.flows, &new.flows),
            needs_restart,
        }
    }

    /// Sets the settings that take effect only at start (workers, offloads, pin_cpus, tunnel_gso,
    /// state_dir, metrics, control, control_group, the flow limits) back to those of
    /// `running`, and
    /// names the ones that differed. A reload applies the rest of the new file.
    /// This is the one list of those settings: [`Config::changes`] reports from it.
    pub fn keep_restart_settings(&mut self, running: &Config) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            changed: &mut Vec<&'static str>,
            name: &'static str,
            new: &mut T,
            running: &T,
        ) {
            if new != running {
                changed.push(name);
                new.clone_from(running);
            }
        }
        let mut changed = Vec::new();
        let c = &mut changed;
        keep(c, "workers", &mut self.workers, &running.workers);
        keep(c, "offloads", &mut self.offloads, &running.offloads);
        keep(c, "pin_cpus", &mut self.pin_cpus, &running.pin_cpus);
        keep(c, "tunnel_gso", &mut self.tunnel_gso, &running.tunnel_gso);
        keep(c, "state_dir", &mut self.state_dir, &running.state_dir);
        keep(c, "metrics", &mut self.metrics, &running.metrics);
        keep(c, "control", &mut self.control, &running.control);
        keep(
            c,
            "control_group",
            &mut self.control_group,
            &running.control_group,
        );
        keep(c, "max_flows", &mut self.max_flows, &running.max_flows);
        keep(
            c,
            "max_flows_per_table",
            &mut self.max_flows_per_table,
            &running.max_flows_per_table,
        );
        keep(
            c,
            "max_bundle_flows",
            &mut self.max_bundle_flows,
            &running.max_bundle_flows,
        );
        keep(
            c,
            "bundle_timeout",
            &mut self.bundle_timeout,
            &running.bundle_timeout,
        );
        changed
    }
}

fn same_flows(a: &[(usize, Flow)], b: &[(usize, Flow)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((_, x), (_, y))| x == y)
}

/// What a reload changes (see [`Config::changes`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigChanges {
    /// Ports added, removed or changed.
    pub ports: PortDiff,
    /// The flows file is another file or has other flows.
    pub flows_changed: bool,
    /// Settings that changed but take effect only at the next start.
    pub needs_restart: Vec<&'static str>,
}

impl ConfigChanges {
    /// True when the reload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && !self.flows_changed && self.needs_restart.is_empty()
    }
}

/// The difference between two port lists, by port name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortDiff {
    /// Ports only in the new list.
    pub added: Vec<PortSpec>,
    /// Ports only in the old list.
    pub removed: Vec<PortSpec>,
    /// Ports in both lists with another type, number or options: `(old, new)`.
    pub changed: Vec<(PortSpec, PortSpec)>,
}

impl PortDiff {
    /// True when the lists describe the same ports.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for PortDiff {
    /// `added pod3; removed pod1; changed vx0`, or `no port changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no port changes");
        }
        let mut parts = Vec::new();
        let names = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
        if !self.added.is_empty() {
            parts.push(format!(
                "added {}",
                names(&mut self.added.iter().map(|p| p.name.as_str()))
            ));
        }
        if !self.removed.is_empty() {
            parts.push(format!(
                "removed {}",
                names(&mut self.removed.iter().map(|p| p.name.as_str()))
            ));
        }
        if !self.changed.is_empty() {
            parts.push(format!(
                "changed {}",
                names(&mut self.changed.iter().map(|(_, p)| p.name.as_str()))
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Compares two port lists by name: which ports a reload adds, removes or changes
/// ([`PortSpec::same_port`], the test the datapath applies). Lists are kept in the
/// order of `new` (added, changed) and `old` (removed).
pub fn diff_ports(old: &[PortSpec], new: &[PortSpec]) -> PortDiff {
    let old_by_name: HashMap<&str, &PortSpec> = old.iter().map(|p| (p.name.as_str(), p)).collect();
    let new_names: HashMap<&str, ()> = new.iter().map(|p| (p.name.as_str(), ())).collect();
    let mut diff = PortDiff::default();
    for p in new {
        match old_by_name.get(p.name.as_str()) {
            None => diff.added.push(p.clone()),
            Some(o) if !o.same_port(p) => diff.changed.push(((*o).clone(), p.clone())),
            Some(_) => {}
        }
    }
    for p in old {
        if !new_names.contains_key(p.name.as_str()) {
            diff.removed.push(p.clone());
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_workers;
    use crate::config::tests::parse;

    #[test]
    fn reload_diff() {
        let old = parse(
            "[[port]]\nname = \"a\"\ntype = \"tap\"\n[[port]]\nname = \"b\"\ntype = \"tap\"\n\
             [[port]]\nname = \"c\"\ntype = \"tap\"\n",
        )
        .unwrap();
        let new = parse(
            "workers = 7\n[[port]]\nname = \"a\"\ntype = \"tap\"\n[[port]]\nname = \"b\"\ntype = \"tap\"\nmtu = 1400\n\
             [[port]]\nname = \"d\"\ntype = \"tap\"\n",
        )
        .unwrap();
        let ch = old.changes(&new);
        let names = |v: &[PortSpec]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ch.ports.added), ["d"]);
        assert_eq!(names(&ch.ports.removed), ["c"]);
        assert_eq!(ch.ports.changed.len(), 1);
        assert_eq!(ch.ports.changed[0].1.to_string(), "b type=tap mtu=1400");
        assert_eq!(ch.ports.to_string(), "added d; removed c; changed b");
        assert!(!ch.flows_changed);
        if default_workers() != 7 {
            assert_eq!(ch.needs_restart, ["workers"]);
        }
        assert!(old.changes(&old).is_empty());
        assert_eq!(diff_ports(&[], &[]).to_string(), "no port changes");
    }

    /// Every setting that needs a restart is reported and set back; ports and flows
    /// are what a reload applies, so they stay as the new file has them.
    #[test]
    fn restart_settings_are_reported_and_kept() {
        let running = parse("workers = 2\n").unwrap();
        let mut new = parse(
            "workers = 3\noffloads = false\npin_cpus = true\ntunnel_gso = true\nstate_dir = \"/x\"\n\
             metrics = \"127.0.0.1:1\"\ncontrol = \"/y.sock\"\ncontrol_group = \"g\"\n\
             [[port]]\nname = \"a\"\ntype = \"tap\"\n",
        )
        .unwrap();
        let all = [
            "workers",
            "offloads",
            "pin_cpus",
            "tunnel_gso",
            "state_dir",
            "metrics",
            "control",
            "control_group",
        ];
        assert_eq!(running.changes(&new).needs_restart, all);
        assert_eq!(new.keep_restart_settings(&running), all);
        assert_eq!(new.ports.len(), 1);
        new.ports.clear();
        assert_eq!(new, running);
        assert!(running.changes(&new).is_empty());
        assert!(new.keep_restart_settings(&running).is_empty());
    }

    /// A reload reports a port as changed exactly when the datapath changes it: a
    /// number the file no longer gives is kept, so that is no change.
    #[test]
    fn reload_diff_keeps_a_port_number_the_file_drops() {
        let port = |extra: &str| {
            parse(&format!("[[port]]\nname = \"a\"\ntype = \"tap\"\n{extra}")).unwrap()
        };
        let numbered = port("ofport = 3\n");
        let ch = numbered.changes(&port(""));
        assert!(ch.ports.is_empty(), "{}", ch.ports);
        let ch = numbered.changes(&port("ofport = 4\n"));
        assert_eq!(ch.ports.to_string(), "changed a");
        let ch = port("").changes(&port("ofport = 4\n"));
        assert_eq!(ch.ports.to_string(), "changed a");
    }
}
