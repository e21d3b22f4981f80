//! The results of the `flowbench` binary: rows of Weft and Open vSwitch times, their
//! medians and ratio, the targets, and the forwarding gaps; written as a text
//! table and a CSV.

use std::fmt::Write as _;

use crate::netns::median;

/// What a row must meet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Weft's median at most this times OVS's.
    Ratio(f64),
    /// Weft's median at most this many milliseconds.
    WeftMs(f64),
    /// Works (every run succeeded, the result was checked).
    Works,
    /// No target.
    None,
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::Ratio(r) => format!("<= {r:.1}x OVS"),
            Target::WeftMs(ms) => format!("<= {ms:.0} ms"),
            Target::Works => "works".into(),
            Target::None => String::new(),
        }
    }
}

/// One measured case: seconds per run on each side.
#[derive(Clone, Debug)]
pub struct Row {
    /// Short key for the CSV (`add_100k`).
    pub key: String,
    /// What the row measures, for the table.
    pub what: String,
    /// Weft's runs, seconds.
    pub weft: Vec<f64>,
    /// OVS's runs, seconds.
    pub ovs: Vec<f64>,
    /// Runs that failed (on either side); a failed run is left out of the medians.
    pub failures: u32,
    /// The target.
    pub target: Target,
}

impl Row {
    /// A row with no runs yet.
    pub fn new(key: &str, what: &str, target: Target) -> Row {
        Row {
            key: key.into(),
            what: what.into(),
            weft: Vec::new(),
            ovs: Vec::new(),
            failures: 0,
            target,
        }
    }

    /// Weft's median / OVS's median (NaN when either is missing).
    pub fn ratio(&self) -> f64 {
        let (w, o) = (median(&self.weft), median(&self.ovs));
        if w.is_finite() && o.is_finite() && o > 0.0 {
            w / o
        } else {
            f64::NAN
        }
    }

    /// Whether the target is met: `None` when it cannot be told (no runs).
    pub fn met(&self) -> Option<bool> {
        let w = median(&self.weft);
        match self.target {
            Target::None => None,
            Target::Works => Some(self.failures == 0 && !self.weft.is_empty()),
            Target::Ratio(r) => {
                let x = self.ratio();
                x.is_finite().then_some(x <= r && self.failures == 0)
            }
            Target::WeftMs(ms) => w.is_finite().then_some(w * 1e3 <= ms && self.failures == 0),
        }
    }
}

/// The forwarding gap of a steady stream (one datagram per interval) while Weft did
/// something.
#[derive(Clone, Debug, Default)]
pub struct Gap {
    /// While what.
    pub during: String,
    /// The largest time between two arrivals, over the runs, in milliseconds.
    pub max_gap_ms: f64,
    /// The largest one-way delay (kernel receive time - send time), milliseconds: what
    /// the switch held a datagram.
    pub max_delay_ms: f64,
    /// The largest gap between two sends (the sender's own stalls), milliseconds.
    pub max_send_gap_ms: f64,
    /// Datagrams sent and received, over the runs.
    pub sent: u64,
    /// Received.
    pub received: u64,
    /// Gaps over 10 ms, over the runs.
    pub over_10ms: u64,
    /// Delays over 10 ms, over the runs.
    pub delays_over_10ms: u64,
    /// The hypervisor's steal time (over the CPUs) during the largest gap, ms.
    pub steal_in_max_gap_ms: f64,
    /// The largest gap in which no steal was recorded, ms.
    pub max_gap_no_steal_ms: f64,
    /// Gaps over 10 ms in which no steal was recorded, over the runs.
    pub over_10ms_no_steal: u64,
    /// Runs.
    pub runs: u32,
}

impl Gap {
    /// Datagrams lost.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

fn secs(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v < 0.1 {
        format!("{:.2} ms", v * 1e3)
    } else {
        format!("{v:.2} s")
    }
}

/// The text table: a header (`title` lines), the rows, the gaps, and `notes`.
pub fn text(title: &[String], rows: &[Row], gaps: &[Gap], notes: &[String]) -> String {
    let mut t = String::new();
    for l in title {
        let _ = writeln!(t, "{l}");
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "{:<52} {:>11} {:>11} {:>9} {:>14} {:>5}",
        "case (median of runs)", "Weft", "OVS 3.1", "Weft/OVS", "target", "met"
    );
    for r in rows {
        let ratio = r.ratio();
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        let mut what = r.what.clone();
        if r.failures > 0 {
            what += &format!(" ({} failed)", r.failures);
        }
        let _ = writeln!(
            t,
            "{:<52} {:>11} {:>11} {:>9} {:>14} {:>5}",
            what,
            secs(median(&r.weft)),
            secs(median(&r.ovs)),
            if ratio.is_finite() {
                format!("{ratio:.2}x")
            } else {
                "-".into()
            },
            r.target.describe(),
            met
        );
    }
    if !gaps.is_empty() {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<52} {:>11} {:>8} {:>11} {:>13} {:>9} {:>11} {:>12} {:>7}",
            "Weft, pod to pod, 1 datagram/ms, while:",
            "arrival gap",
            "(steal)",
            "delay",
            "lost/sent",
            "> 10 ms",
            "send gap",
            "no-steal gap",
            "> 10 ms"
        );
        for g in gaps {
            let _ = writeln!(
                t,
                "{:<52} {:>8.1} ms {:>5.0} ms {:>8.1} ms {:>13} {:>9} {:>8.1} ms {:>9.1} ms {:>7}",
                format!("{} ({} runs)", g.during, g.runs),
                g.max_gap_ms,
                g.steal_in_max_gap_ms,
                g.max_delay_ms,
                format!("{}/{}", g.lost(), g.sent),
                format!("{}/{}", g.over_10ms, g.delays_over_10ms),
                g.max_send_gap_ms,
                g.max_gap_no_steal_ms,
                g.over_10ms_no_steal
            );
        }
        let _ = writeln!(
            t,
            "(largest of the runs; arrival gap: between two kernel receive timestamps, (steal): \
             the hypervisor's steal time in it, summed over the CPUs, in /proc/stat's 10 ms ticks; \
             delay: one way, send to kernel receive, what the switch held a datagram; > 10 ms: \
             arrival gaps/delays over 10 ms; send gap: the sender's own largest, its scheduling; \
             no-steal gap: the largest arrival gap in which no steal was recorded, and how many \
             of those were over 10 ms)"
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(t);
        for n in notes {
            let _ = writeln!(t, "{n}");
        }
    }
    t
}

/// The CSV: one line per row (every run, `;`-separated), then one per gap.
pub fn csv(rows: &[Row], gaps: &[Gap]) -> String {
    let mut c = String::from(
        "case,what,weft_median_s,ovs_median_s,ratio,target,met,failures,weft_runs_s,ovs_runs_s\n",
    );
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.6}"))
            .collect::<Vec<_>>()
            .join(";")
    };
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x:.6}")
        } else {
            String::new()
        }
    };
    for r in rows {
        let _ = writeln!(
            c,
            "{},\"{}\",{},{},{},{},{},{},{},{}",
            r.key,
            r.what.replace('"', "'"),
            num(median(&r.weft)),
            num(median(&r.ovs)),
            num(r.ratio()),
            r.target.describe(),
            match r.met() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            },
            r.failures,
            runs(&r.weft),
            runs(&r.ovs)
        );
    }
    if !gaps.is_empty() {
        c.push_str(
            "\ngap_during,max_gap_ms,max_delay_ms,max_send_gap_ms,sent,received,lost,\
             gaps_over_10ms,delays_over_10ms,runs,steal_in_max_gap_ms,max_gap_no_steal_ms,\
             gaps_over_10ms_no_steal\n",
        );
        for g in gaps {
            let _ = writeln!(
                c,
                "\"{}\",{:.3},{:.3},{:.3},{},{},{},{},{},{},{:.0},{:.3},{}",
                g.during,
                g.max_gap_ms,
                g.max_delay_ms,
                g.max_send_gap_ms,
                g.sent,
                g.received,
                g.lost(),
                g.over_10ms,
                g.delays_over_10ms,
                g.runs,
                g.steal_in_max_gap_ms,
                g.max_gap_no_steal_ms,
                g.over_10ms_no_steal
            );
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(weft: &[f64], ovs: &[f64], target: Target) -> Row {
        Row {
            weft: weft.to_vec(),
            ovs: ovs.to_vec(),
            ..Row::new("add_100k", "add-flows 100k", target)
        }
    }

    #[test]
    fn ratio_is_of_medians_and_targets_are_judged() {
        let r = row(&[1.0, 9.0, 2.0], &[4.0, 4.0, 100.0], Target::Ratio(0.5));
        assert_eq!(r.ratio(), 0.5);
        assert_eq!(r.met(), Some(true));
        let r = row(&[3.0, 3.0, 3.0], &[4.0], Target::Ratio(0.5));
        assert_eq!(r.met(), Some(false));
        let mut r = row(&[0.004, 0.006, 0.0049], &[0.02], Target::WeftMs(5.0));
        assert_eq!(r.met(), Some(true));
        r.failures = 1;
        assert_eq!(r.met(), Some(false), "a failed run fails the target");
        assert_eq!(row(&[], &[1.0], Target::Ratio(1.0)).met(), None);
        assert!(row(&[1.0], &[], Target::None).ratio().is_nan());
        assert_eq!(row(&[1.0], &[], Target::Works).met(), Some(true));
        assert_eq!(row(&[], &[], Target::Works).met(), Some(false));
    }

    #[test]
    fn table_and_csv_carry_the_medians_ratio_and_gaps() {
        let rows = [
            row(&[0.5, 0.7, 0.6], &[2.0, 2.4, 2.2], Target::Ratio(0.5)),
            row(&[0.003], &[0.2], Target::WeftMs(5.0)),
        ];
        let gaps = [Gap {
            during: "add-flows 1M".into(),
            max_gap_ms: 4.25,
            max_delay_ms: 12.5,
            max_send_gap_ms: 1.5,
            sent: 3000,
            received: 2998,
            over_10ms: 0,
            delays_over_10ms: 1,
            steal_in_max_gap_ms: 10.0,
            max_gap_no_steal_ms: 3.5,
            over_10ms_no_steal: 0,
            runs: 3,
        }];
        let t = text(&["title".into()], &rows, &gaps, &["note: n".into()]);
        let line = t.lines().find(|l| l.starts_with("add-flows 100k")).unwrap();
        assert!(
            line.contains("600.00 ms") || line.contains("0.60 s"),
            "{line}"
        );
        assert!(
            line.contains("2.20 s") && line.contains("0.27x") && line.ends_with("yes"),
            "{line}"
        );
        assert!(t.contains("3.00 ms"), "{t}");
        let g = t
            .lines()
            .find(|l| l.starts_with("add-flows 1M (3 runs)"))
            .unwrap();
        assert!(
            g.contains("2/3000") && g.contains("4.2 ms") && g.contains("12.5 ms"),
            "{g}"
        );
        assert!(g.contains(" 0/1 ") && g.contains(" 1.5 ms"), "{g}");
        assert!(
            g.contains("   10 ms") && g.ends_with("3.5 ms       0"),
            "{g}"
        );
        assert!(t.ends_with("note: n\n"));
        let c = csv(&rows, &gaps);
        let l: Vec<&str> = c.lines().collect();
        assert_eq!(
            l[1],
            "add_100k,\"add-flows 100k\",0.600000,2.200000,0.272727,<= 0.5x OVS,yes,0,\
             0.500000;0.700000;0.600000,2.000000;2.400000;2.200000"
        );
        assert!(
            c.contains("\"add-flows 1M\",4.250,12.500,1.500,3000,2998,2,0,1,3,10,3.500,0"),
            "{c}"
        );
    }
}
