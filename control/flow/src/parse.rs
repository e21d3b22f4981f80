//! The parser of the ovs-ofctl flow text syntax.
//!
//! A line is `SETTING=...,MATCH...,actions=ACTION,...`: settings and matches are
//! separated by commas and/or spaces, `actions=` comes last and takes the rest of the
//! line (its actions are separated by commas outside parentheses). The parser reads the
//! whole line, then checks prerequisites (so `tp_dst=80,tcp` is as good as
//! `tcp,tp_dst=80`), then builds canonical values (see [`Match`]). Every error names the
//! offending token and its column.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use encap::{
    ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP,
};

use super::error::{FlowError, ParseError, ParseErrorKind, excerpt};
use super::field::{Field, ValueKind};
use super::matching::all_ones;
use super::value::{FieldValue, MacAddr, Masked, PortRef};
use super::{
    Action, Bundle, DEFAULT_PRIORITY, FieldRange, Flow, FlowFilter, FlowMod, MAX_TABLE, Match,
    check_actions,
};

/// Parses an unsigned number in decimal or `0x` hex.
pub fn parse_u64(s: &str) -> Option<u64> {
    parse_u128(s).and_then(|v| u64::try_from(v).ok())
}

/// Parses an unsigned number of up to 128 bits in decimal or `0x` hex.
pub fn parse_u128(s: &str) -> Option<u128> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(h, 16).ok()
    } else {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
}

/// The match shorthands: name, dl_type, nw_proto.
pub const SHORTHANDS: [(&str, u16, Option<u8>); 9] = [
    ("ip", ETHERTYPE_IPV4, None),
    ("ipv6", ETHERTYPE_IPV6, None),
    ("arp", ETHERTYPE_ARP, None),
    ("icmp", ETHERTYPE_IPV4, Some(IPPROTO_ICMP)),
    ("icmp6", ETHERTYPE_IPV6, Some(IPPROTO_ICMPV6)),
    ("tcp", ETHERTYPE_IPV4, Some(IPPROTO_TCP)),
    ("udp", ETHERTYPE_IPV4, Some(IPPROTO_UDP)),
    ("tcp6", ETHERTYPE_IPV6, Some(IPPROTO_TCP)),
    ("udp6", ETHERTYPE_IPV6, Some(IPPROTO_UDP)),
];

const SETTINGS: [&str; 5] = [
    "table",
    "priority",
    "cookie",
    "idle_timeout",
    "hard_timeout",
];

/// Every action name the parser knows, for did-you-mean suggestions.
pub const ACTION_NAMES: [&str; 18] = [
    "output",
    "in_port",
    "normal",
    "flood",
    "drop",
    "goto_table",
    "resubmit",
    "set_field",
    "load",
    "move",
    "mod_dl_src",
    "mod_dl_dst",
    "mod_nw_src",
    "mod_nw_dst",
    "mod_nw_ttl",
    "set_tunnel",
    "set_tunnel64",
    "dec_ttl",
];

/// Which form of flow text is being read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FlowModCommand {
    /// `add-flow`: a full flow with `actions=`.
    Add,
    /// `mod-flows`: a filter (match, `table=`, `cookie=C/MASK`) and `actions=`.
    Modify,
    /// `mod-flows --strict`: like `Modify`, with `priority=`.
    ModifyStrict,
    /// `del-flows`: a filter without actions.
    Delete,
    /// `del-flows --strict`: a filter with `priority=`, without actions.
    DeleteStrict,
}

/// Parses one flow (`add-flow` form). `actions=` is required.
pub fn parse_flow(text: &str) -> Result<Flow, ParseError> {
    let p = parse_line(text, Mode::Flow)?;
    Ok(Flow {
        cookie: p.cookie.map_or(0, |c| c.value),
        table: p.table.unwrap_or(0),
        priority: p.priority.unwrap_or(DEFAULT_PRIORITY),
        idle_timeout: p.idle_timeout.unwrap_or(0),
        hard_timeout: p.hard_timeout.unwrap_or(0),
        matches: p.matches,
        actions: p.actions.unwrap_or_default(),
    })
}

/// Parses a match-only filter (`del-flows` / `dump-flows` form): matches plus
/// `table=`, `cookie=C[/MASK]` and `priority=` (used by strict commands). The empty
/// string selects every flow.
pub fn parse_filter(text: &str) -> Result<FlowFilter, ParseError> {
    let p = parse_line(text, Mode::Filter)?;
    Ok(p.into_filter())
}

/// Parses a list of actions as written after `actions=`. Without a match to check
/// them against, prerequisites of the fields they touch are not checked.
pub fn parse_actions(text: &str) -> Result<Vec<Action>, ParseError> {
    let mut line = String::from("actions=");
    line.push_str(text);
    let p = parse_line(&line, Mode::ActionsOnly).map_err(|mut e| {
        e.column = e.column.saturating_sub(8).max(1);
        e
    })?;
    Ok(p.actions.unwrap_or_default())
}

/// Parses one change in the form its command takes (see [`FlowModCommand`]).
pub fn parse_flow_mod(command: FlowModCommand, text: &str) -> Result<FlowMod, ParseError> {
    Ok(match command {
        FlowModCommand::Add => FlowMod::Add {
            flow: parse_flow(text)?,
        },
        FlowModCommand::Modify | FlowModCommand::ModifyStrict => {
            let mut p = parse_line(text, Mode::Modify)?;
            let actions = p.actions.take().unwrap_or_default();
            let filter = p.into_filter();
            if command == FlowModCommand::Modify {
                FlowMod::Modify { filter, actions }
            } else {
                FlowMod::ModifyStrict { filter, actions }
            }
        }
        FlowModCommand::Delete => FlowMod::Delete {
            filter: parse_filter(text)?,
        },
        FlowModCommand::DeleteStrict => FlowMod::DeleteStrict {
            filter: parse_filter(text)?,
        },
    })
}

/// Parses a flows file: one flow per line; blank lines and `#` comments are ignored.
/// Returns each flow with its (1-based) line number; an error carries its line.
pub fn parse_flows_file(text: &str) -> Result<Vec<(usize, Flow)>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let flow = parse_flow(line).map_err(|e| e.at_line(i + 1))?;
        out.push((i + 1, flow));
    }
    Ok(out)
}

/// Parses a flows file into a bundle that adds every flow (`add-flows FILE`).
pub fn parse_bundle_file(text: &str) -> Result<Bundle, ParseError> {
    Ok(Bundle::add_flows(parse_flows_file(text)?))
}

impl FromStr for Flow {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_flow(s)
    }
}

impl FromStr for FlowFilter {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_filter(s)
    }
}

impl FromStr for Action {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut v = parse_actions(s)?;
        if v.len() != 1 {
            return Err(ParseError {
                line: None,
                column: 1,
                token: excerpt(s).into_owned(),
                kind: ParseErrorKind::Syntax("expected exactly one action".into()),
            });
        }
        Ok(v.remove(0))
    }
}

/// The property the fuzz target and the corpus replay check: if `text` parses as a flow
/// (or as a filter), its printed form parses back to the same value and prints the same.
/// Panics otherwise.
pub fn check_round_trip(text: &str) {
    if let Ok(f) = parse_flow(text) {
        let printed = f.to_string();
        match parse_flow(&printed) {
            Ok(back) => {
                assert_eq!(
                    back, f,
                    "{text:?} printed as {printed:?} re-parsed differently"
                );
                assert_eq!(back.to_string(), printed, "printing is not a fixed point");
            }
            Err(e) => panic!("{text:?} printed as {printed:?}, which does not parse: {e}"),
        }
        let json = serde_json::to_string(&f).expect("flow to json");
        let from_json: Flow = serde_json::from_str(&json).expect("flow from json");
        assert_eq!(from_json, f, "json round trip of {text:?}");
        assert_eq!(
            f.validate(),
            Ok(()),
            "parsed flow {text:?} does not validate"
        );
    }
    if let Ok(flt) = parse_filter(text) {
        let printed = flt.to_string();
        match parse_filter(&printed) {
            Ok(back) => assert_eq!(back, flt, "filter {text:?} printed as {printed:?}"),
            Err(e) => panic!("filter {text:?} printed as {printed:?}, which does not parse: {e}"),
        }
    }
}

/// The edit distance between two strings: insertions, deletions, substitutions and
/// transpositions of neighbours (`tpc` → `tcp`) each cost one (optimal string
/// alignment distance, by characters).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for (i, row) in d.chunks_mut(w).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// The longest word (in bytes) [`did_you_mean`] looks for a suggestion for: longer
/// input is no typo of a name, and the cost of a suggestion stays small for any input.
pub const SUGGEST_MAX_LEN: usize = 64;

/// The most candidates [`did_you_mean`] compares a word with.
pub const SUGGEST_MAX_CANDIDATES: usize = 1024;

/// The candidate closest to `word` if it is close enough to be a likely typo. Costs at
/// most [`SUGGEST_MAX_CANDIDATES`] comparisons of at most [`SUGGEST_MAX_LEN`] bytes,
/// whatever the input: a longer word (or candidate) gets no suggestion.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if word.len() > SUGGEST_MAX_LEN {
        return None;
    }
    let lower = word.to_ascii_lowercase();
    let chars = word.chars().count();
    let limit = (chars / 3).clamp(1, 3);
    candidates
        .into_iter()
        .take(SUGGEST_MAX_CANDIDATES)
        // The distance is at least the difference in length.
        .filter(|c| c.len() <= SUGGEST_MAX_LEN && c.chars().count().abs_diff(chars) <= limit)
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flow,
    Filter,
    Modify,
    ActionsOnly,
}

/// A piece of the line and where it starts (byte offset).
#[derive(Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    at: usize,
}

struct Parsed {
    cookie: Option<Masked<u64>>,
    table: Option<u8>,
    priority: Option<u16>,
    idle_timeout: Option<u16>,
    hard_timeout: Option<u16>,
    matches: Match,
    actions: Option<Vec<Action>>,
}

impl Parsed {
    fn into_filter(self) -> FlowFilter {
        FlowFilter {
            table: self.table,
            cookie: self.cookie,
            priority: self.priority,
            matches: self.matches,
        }
    }
}

struct Parser<'a> {
    line: &'a str,
}

impl<'a> Parser<'a> {
    fn err(&self, tok: Tok<'_>, kind: ParseErrorKind) -> ParseError {
        let at = tok.at.min(self.line.len());
        let column = self.line.get(..at).map_or(at, |s| s.chars().count()) + 1;
        ParseError {
            line: None,
            column,
            token: excerpt(tok.text).into_owned(),
            kind,
        }
    }

    fn bad(&self, tok: Tok<'_>, what: &str, value: &str, expected: &str) -> ParseError {
        self.err(
            tok,
            ParseErrorKind::BadValue {
                what: what.to_string(),
                value: value.to_string(),
                expected: expected.to_string(),
            },
        )
    }
}

/// Finds `actions=` at the start of a token; returns its byte offset.
fn find_actions(line: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = line[from..].find("actions=") {
        let at = from + i;
        let before = line[..at].chars().next_back();
        if before.is_none_or(|c| c == ',' || c.is_whitespace()) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Splits `s` (starting at byte `base` of the line) on commas and whitespace.
fn split_matches(s: &str, base: usize) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        if c == ',' || c.is_whitespace() {
            if let Some(st) = start.take() {
                out.push(Tok {
                    text: &s[st..i],
                    at: base + st,
                });
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        out.push(Tok {
            text: &s[st..],
            at: base + st,
        });
    }
    out
}

/// Splits the action list on commas outside parentheses; trims each action.
fn split_actions<'a>(s: &'a str, base: usize) -> Result<Vec<Tok<'a>>, (usize, &'static str)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let push = |out: &mut Vec<Tok<'a>>, st: usize, end: usize| {
        let piece = &s[st..end];
        let lead = piece.len() - piece.trim_start().len();
        let t = piece.trim();
        out.push(Tok {
            text: t,
            at: base + st + lead,
        });
    };
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or((base + i, "unbalanced ')' in actions"))?
            }
            ',' if depth == 0 => {
                push(&mut out, start, i);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err((base + start, "unbalanced '(' in actions"));
    }
    push(&mut out, start, s.len());
    if out.len() == 1 && out[0].text.is_empty() {
        out.clear();
    }
    Ok(out)
}

fn parse_line(line: &str, mode: Mode) -> Result<Parsed, ParseError> {
    let p = Parser { line };
    let (match_part, actions_at) = match find_actions(line) {
        Some(at) => (&line[..at], Some(at)),
        None => (line, None),
    };
    let mut out = Parsed {
        cookie: None,
        table: None,
        priority: None,
        idle_timeout: None,
        hard_timeout: None,
        matches: Match::default(),
        actions: None,
    };
    // Fields in the order given, with their tokens, for prerequisite errors.
    let mut seen: Vec<(Field, Tok<'_>)> = Vec::new();

    for tok in split_matches(match_part, 0) {
        let (key, value) = match tok.text.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (tok.text, None),
        };
        let key_tok = Tok {
            text: key,
            at: tok.at,
        };
        if mode == Mode::ActionsOnly {
            return Err(p.err(tok, ParseErrorKind::Syntax("expected actions".into())));
        }
        if let Some((_, dl, proto)) = SHORTHANDS.iter().find(|s| s.0 == key) {
            if value.is_some() {
                return Err(p.err(tok, ParseErrorKind::UnexpectedValue(key.to_string())));
            }
            set_field(
                &p,
                tok,
                &mut out.matches,
                Field::DlType,
                Masked::exact(*dl).to_value(),
            )?;
            seen.push((Field::DlType, tok));
            if let Some(proto) = proto {
                set_field(
                    &p,
                    tok,
                    &mut out.matches,
                    Field::NwProto,
                    Masked::exact(*proto).to_value(),
                )?;
                seen.push((Field::NwProto, tok));
            }
            continue;
        }
        if SETTINGS.contains(&key) {
            let Some(v) = value else {
                return Err(p.err(tok, ParseErrorKind::MissingValue(key.to_string())));
            };
            parse_setting(&p, tok, key, v, mode, &mut out)?;
            continue;
        }
        if key == "actions" {
            // Only reachable when `actions=` was glued to something before it.
            return Err(p.err(
                tok,
                ParseErrorKind::Syntax("'actions=' must start a new token".into()),
            ));
        }
        let Some(field) = Field::from_name(key) else {
            let suggestion = did_you_mean(
                key,
                Field::ALL
                    .iter()
                    .flat_map(|f| std::iter::once(f.name()).chain(f.info().aliases.iter().copied()))
                    .chain(SHORTHANDS.iter().map(|s| s.0))
                    .chain(SETTINGS)
                    .chain(["actions"]),
            );
            return Err(p.err(
                key_tok,
                ParseErrorKind::UnknownField {
                    name: key.to_string(),
                    suggestion,
                },
            ));
        };
        let Some(v) = value else {
            return Err(p.err(tok, ParseErrorKind::MissingValue(key.to_string())));
        };
        if field == Field::InPort {
            let port = parse_port(&p, tok, "in_port", v)?;
            match &out.matches.in_port {
                Some(old) if *old != port => {
                    return Err(p.err(tok, ParseErrorKind::Conflict("in_port".into())));
                }
                _ => out.matches.in_port = Some(port),
            }
            continue;
        }
        let mv = parse_masked(&p, tok, field, v, field.maskable())?;
        if field == Field::NwTos && matches!(mv.value, FieldValue::Uint(t) if t & 3 != 0) {
            let FieldValue::Uint(t) = mv.value else {
                unreachable!()
            };
            return Err(p.err(tok, FlowError::NwTosEcn(t as u8).into()));
        }
        set_field(&p, tok, &mut out.matches, field, mv)?;
        seen.push((field, tok));
    }

    // Prerequisites, in the order the fields were written.
    for (f, tok) in &seen {
        if !f.prereq().is_met(&out.matches) {
            return Err(p.err(*tok, FlowError::MissingPrereq(*f).into()));
        }
    }
    // A zero mask matches anything: canonical form leaves the field out.
    for (f, _) in &seen {
        if let Some(v) = out.matches.get(*f)
            && v.mask.is_zero()
        {
            out.matches.set(*f, None).expect("clearing a field");
        }
    }

    match (actions_at, mode) {
        (None, Mode::Flow | Mode::Modify) => {
            let end = Tok {
                text: "",
                at: line.len(),
            };
            return Err(p.err(end, ParseErrorKind::MissingActions));
        }
        (Some(at), Mode::Filter) => {
            let tok = Tok {
                text: "actions=",
                at,
            };
            return Err(p.err(tok, ParseErrorKind::ActionsNotAllowed));
        }
        (Some(at), _) => {
            let list_at = at + "actions=".len();
            let toks = split_actions(&line[list_at..], list_at).map_err(|(at, msg)| {
                p.err(
                    Tok {
                        text: &line[at.min(line.len())..],
                        at,
                    },
                    ParseErrorKind::Syntax(msg.into()),
                )
            })?;
            let m = (mode != Mode::ActionsOnly).then_some(&out.matches);
            out.actions = Some(parse_action_list(&p, &toks, m, out.table)?);
        }
        (None, _) => {}
    }
    Ok(out)
}

fn parse_setting(
    p: &Parser<'_>,
    tok: Tok<'_>,
    key: &str,
    v: &str,
    mode: Mode,
    out: &mut Parsed,
) -> Result<(), ParseError> {
    fn put<T: PartialEq + Copy>(
        p: &Parser<'_>,
        tok: Tok<'_>,
        key: &str,
        slot: &mut Option<T>,
        val: T,
    ) -> Result<(), ParseError> {
        match slot {
            Some(old) if *old != val => Err(p.err(tok, ParseErrorKind::Conflict(key.to_string()))),
            _ => {
                *slot = Some(val);
                Ok(())
            }
        }
    }
    let num = |max: u64, expected: &str| -> Result<u64, ParseError> {
        parse_u64(v)
            .filter(|n| *n <= max)
            .ok_or_else(|| p.bad(tok, key, v, expected))
    };
    match key {
        "table" => {
            let t = num(u64::from(u8::MAX), "a table number 0 to 253")? as u8;
            if t > MAX_TABLE {
                return Err(p.err(tok, FlowError::TableOutOfRange(t).into()));
            }
            put(p, tok, key, &mut out.table, t)
        }
        "priority" => {
            let n = num(u64::from(u16::MAX), "a priority 0 to 65535")? as u16;
            put(p, tok, key, &mut out.priority, n)
        }
        "idle_timeout" | "hard_timeout" => {
            if mode != Mode::Flow {
                return Err(p.err(tok, ParseErrorKind::NotAllowed(key.to_string())));
            }
            let n = num(u64::from(u16::MAX), "seconds 0 to 65535")? as u16;
            let slot = if key == "idle_timeout" {
                &mut out.idle_timeout
            } else {
                &mut out.hard_timeout
            };
            put(p, tok, key, slot, n)
        }
        _ => {
            // cookie
            let (val, mask) = match v.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (v, None),
            };
            let expected = if mode == Mode::Flow {
                "a 64-bit number"
            } else {
                "a 64-bit number, optionally /MASK"
            };
            let c = parse_u64(val).ok_or_else(|| p.bad(tok, key, v, expected))?;
            let m = match mask {
                None => u64::MAX,
                Some(_) if mode == Mode::Flow => {
                    return Err(p.err(
                        tok,
                        ParseErrorKind::Syntax(
                            "a cookie mask only selects flows (del-flows, dump-flows, mod-flows)"
                                .into(),
                        ),
                    ));
                }
                Some(m) => parse_u64(m).ok_or_else(|| p.bad(tok, key, v, expected))?,
            };
            put(p, tok, key, &mut out.cookie, Masked::new(c, m))
        }
    }
}

fn set_field(
    p: &Parser<'_>,
    tok: Tok<'_>,
    m: &mut Match,
    field: Field,
    v: Masked<FieldValue>,
) -> Result<(), ParseError> {
    if let Some(old) = m.get(field)
        && old != v
    {
        return Err(p.err(tok, ParseErrorKind::Conflict(field.name().to_string())));
    }
    m.set(field, Some(v))
        .map_err(|e| p.err(tok, ParseErrorKind::Invalid(e)))
}

fn parse_port(p: &Parser<'_>, tok: Tok<'_>, what: &str, v: &str) -> Result<PortRef, ParseError> {
    const EXPECTED: &str = "a port number or name";
    if let Some(n) = parse_u128(v) {
        return u32::try_from(n)
            .map(PortRef::Number)
            .map_err(|_| p.bad(tok, what, v, EXPECTED));
    }
    if PortRef::is_valid_name(v) {
        Ok(PortRef::Name(v.to_string()))
    } else {
        Err(p.bad(tok, what, v, EXPECTED))
    }
}

fn expected_for(field: Field, masked: bool) -> String {
    let m = if masked { "" } else { " (no mask)" };
    match field.kind() {
        ValueKind::Port => "a port number or name".into(),
        ValueKind::Uint => {
            let mask = if masked { ", optionally /MASK" } else { "" };
            format!("a {}-bit number{mask}", field.bits())
        }
        ValueKind::Mac => {
            if masked {
                "a mac address, optionally /MASK".into()
            } else {
                format!("a mac address{m}")
            }
        }
        ValueKind::Ipv4 => {
            if masked {
                "an IPv4 address, optionally /PREFIX or /MASK".into()
            } else {
                format!("an IPv4 address{m}")
            }
        }
        ValueKind::Ipv6 => {
            if masked {
                "an IPv6 address, optionally /PREFIX or /MASK".into()
            } else {
                format!("an IPv6 address{m}")
            }
        }
    }
}

/// Parses one plain value (no mask) of `field`'s kind.
fn parse_plain(field: Field, s: &str) -> Option<FieldValue> {
    match field.kind() {
        ValueKind::Port => None,
        ValueKind::Uint => {
            let n = parse_u64(s)?;
            (field.bits() >= 64 || n >> field.bits() == 0).then_some(FieldValue::Uint(n))
        }
        ValueKind::Mac => s.parse::<MacAddr>().ok().map(FieldValue::Mac),
        ValueKind::Ipv4 => s.parse::<Ipv4Addr>().ok().map(FieldValue::Ipv4),
        ValueKind::Ipv6 => s.parse::<Ipv6Addr>().ok().map(FieldValue::Ipv6),
    }
}

/// Parses `VALUE` or `VALUE/MASK` (or `/PREFIX` for addresses) for `field`; the result is
/// ANDed with its mask.
fn parse_masked(
    p: &Parser<'_>,
    tok: Tok<'_>,
    field: Field,
    s: &str,
    allow_mask: bool,
) -> Result<Masked<FieldValue>, ParseError> {
    let bad = || p.bad(tok, field.name(), s, &expected_for(field, allow_mask));
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    let value = parse_plain(field, v).ok_or_else(bad)?;
    let mask = match m {
        None => all_ones(field),
        Some(_) if !allow_mask => {
            return Err(p.err(tok, FlowError::NotMaskable(field).into()));
        }
        Some(m) => match field.kind() {
            ValueKind::Ipv4 if !m.contains('.') => {
                let len = m.parse::<u32>().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
                let bits = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                FieldValue::Ipv4(Ipv4Addr::from(bits))
            }
            ValueKind::Ipv6 if !m.contains(':') => {
                let len = m
                    .parse::<u32>()
                    .ok()
                    .filter(|l| *l <= 128)
                    .ok_or_else(bad)?;
                let bits = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                FieldValue::Ipv6(Ipv6Addr::from(bits))
            }
            _ => parse_plain(field, m).ok_or_else(bad)?,
        },
    };
    let value = value.and(mask).ok_or_else(bad)?;
    Ok(Masked { value, mask })
}

fn parse_action_list(
    p: &Parser<'_>,
    toks: &[Tok<'_>],
    m: Option<&Match>,
    table: Option<u8>,
) -> Result<Vec<Action>, ParseError> {
    let mut out = Vec::new();
    let mut drop_tok = None;
    for (i, tok) in toks.iter().enumerate() {
        if i > 0 && matches!(out.last(), Some(Action::GotoTable(_))) {
            return Err(p.err(*tok, FlowError::GotoNotLast.into()));
        }
        let Some(a) = parse_action(p, *tok)? else {
            drop_tok = Some(*tok);
            continue;
        };
        check_actions(std::slice::from_ref(&a), m, table).map_err(|e| p.err(*tok, e.into()))?;
        out.push(a);
    }
    if let Some(tok) = drop_tok
        && toks.len() > 1
    {
        return Err(p.err(
            tok,
            ParseErrorKind::Syntax("drop must be the only action".into()),
        ));
    }
    Ok(out)
}

/// Parses one action; `None` for `drop`.
fn parse_action(p: &Parser<'_>, tok: Tok<'_>) -> Result<Option<Action>, ParseError> {
    let t = tok.text;
    if t.is_empty() {
        return Err(p.err(tok, ParseErrorKind::Syntax("empty action".into())));
    }
    let split = t.find([':', '(']).unwrap_or(t.len());
    let (name, rest) = t.split_at(split);
    let arg = rest.strip_prefix(':');
    let need = |what: &str| -> Result<&str, ParseError> {
        arg.filter(|a| !a.is_empty()).ok_or_else(|| {
            p.err(
                tok,
                ParseErrorKind::Syntax(format!("{name} needs an argument ({name}:{what})")),
            )
        })
    };
    let no_arg = || -> Result<(), ParseError> {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(p.err(
                tok,
                ParseErrorKind::Syntax(format!("{name} takes no argument")),
            ))
        }
    };
    let lname = name.to_ascii_lowercase();
    let a = match lname.as_str() {
        "output" => Action::Output(parse_port(p, tok, "output", need("PORT")?)?),
        "in_port" => {
            no_arg()?;
            Action::InPort
        }
        "normal" => {
            no_arg()?;
            Action::Normal
        }
        "flood" => {
            no_arg()?;
            Action::Flood
        }
        "drop" => {
            no_arg()?;
            return Ok(None);
        }
        "dec_ttl" => {
            no_arg()?;
            Action::DecTtl
        }
        "goto_table" => Action::GotoTable(parse_table(p, tok, "goto_table", need("TABLE")?)?),
        "resubmit" => parse_resubmit(p, tok, rest)?,
        "set_field" => parse_set_field(p, tok, need("VALUE->FIELD")?)?,
        "load" => parse_load(p, tok, need("VALUE->FIELD[]")?)?,
        "move" => parse_move(p, tok, need("SRC[]->DST[]")?)?,
        "mod_dl_src" | "mod_dl_dst" => {
            let v = need("MAC")?;
            let mac = v
                .parse::<MacAddr>()
                .map_err(|_| p.bad(tok, &lname, v, "a mac address"))?;
            if lname == "mod_dl_src" {
                Action::ModDlSrc(mac)
            } else {
                Action::ModDlDst(mac)
            }
        }
        "mod_nw_src" | "mod_nw_dst" => {
            let v = need("IP")?;
            let ip = v
                .parse::<Ipv4Addr>()
                .map_err(|_| p.bad(tok, &lname, v, "an IPv4 address"))?;
            if lname == "mod_nw_src" {
                Action::ModNwSrc(ip)
            } else {
                Action::ModNwDst(ip)
            }
        }
        "mod_nw_ttl" => {
            let v = need("TTL")?;
            let n = parse_u64(v)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| p.bad(tok, &lname, v, "a TTL 0 to 255"))?;
            Action::ModNwTtl(n)
        }
        "set_tunnel" | "set_tunnel64" => {
            let v = need("ID")?;
            // OVS takes 32 (64) bits, but VXLAN and Geneve carry 24: a larger value was
            // cut to its low 24 bits on the wire, a different tenant's VNI.
            let n = parse_u64(v)
                .filter(|n| *n <= super::MAX_TUN_ID)
                .ok_or_else(|| {
                    p.bad(
                        tok,
                        &lname,
                        v,
                        "a VNI 0 to 0xffffff (VXLAN and Geneve carry 24 bits)",
                    )
                })?;
            Action::SetTunnel(n)
        }
        _ => {
            if rest.is_empty()
                && let Some(n) = parse_u128(t)
            {
                // A bare port number is `output:N`, as in OVS.
                let n = u32::try_from(n).map_err(|_| p.bad(tok, "output", t, "a port number"))?;
                return Ok(Some(Action::Output(PortRef::Number(n))));
            }
            let suggestion = did_you_mean(name, ACTION_NAMES);
            return Err(p.err(
                Tok {
                    text: name,
                    at: tok.at,
                },
                ParseErrorKind::UnknownAction {
                    name: name.to_string(),
                    suggestion,
                },
            ));
        }
    };
    Ok(Some(a))
}

fn parse_table(p: &Parser<'_>, tok: Tok<'_>, what: &str, v: &str) -> Result<u8, ParseError> {
    let n = parse_u64(v)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| p.bad(tok, what, v, "a table number 0 to 253"))?;
    if n > MAX_TABLE {
        return Err(p.err(tok, FlowError::TableOutOfRange(n).into()));
    }
    Ok(n)
}

fn parse_resubmit(p: &Parser<'_>, tok: Tok<'_>, rest: &str) -> Result<Action, ParseError> {
    if let Some(port) = rest.strip_prefix(':') {
        return Ok(Action::Resubmit {
            port: Some(parse_port(p, tok, "resubmit", port)?),
            table: None,
        });
    }
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            p.bad(
                tok,
                "resubmit",
                rest,
                "resubmit:PORT or resubmit(PORT,TABLE)",
            )
        })?;
    let (port, table) = inner.split_once(',').ok_or_else(|| {
        p.bad(
            tok,
            "resubmit",
            rest,
            "resubmit(PORT,TABLE) or resubmit(,TABLE)",
        )
    })?;
    let (port, table) = (port.trim(), table.trim());
    let port = if port.is_empty() {
        None
    } else {
        Some(parse_port(p, tok, "resubmit", port)?)
    };
    let table = if table.is_empty() {
        None
    } else {
        Some(parse_table(p, tok, "resubmit", table)?)
    };
    if port.is_none() && table.is_none() {
        return Err(p.err(tok, FlowError::EmptyResubmit.into()));
    }
    Ok(Action::Resubmit { port, table })
}

fn split_arrow<'s>(
    p: &Parser<'_>,
    tok: Tok<'_>,
    what: &str,
    s: &'s str,
) -> Result<(&'s str, &'s str), ParseError> {
    s.rsplit_once("->").ok_or_else(|| {
        p.err(
            tok,
            ParseErrorKind::Syntax(format!("{what} needs '->' between source and destination")),
        )
    })
}

fn lookup_field(p: &Parser<'_>, tok: Tok<'_>, name: &str) -> Result<Field, ParseError> {
    Field::from_any_name(name).ok_or_else(|| {
        p.err(
            tok,
            ParseErrorKind::UnknownField {
                name: name.to_string(),
                suggestion: did_you_mean(name, Field::all_names()),
            },
        )
    })
}

fn parse_set_field(p: &Parser<'_>, tok: Tok<'_>, arg: &str) -> Result<Action, ParseError> {
    let (value, name) = split_arrow(p, tok, "set_field", arg)?;
    let field = lookup_field(p, tok, name)?;
    if field.kind() == ValueKind::Port {
        return Err(p.err(tok, FlowError::NotWritable(field).into()));
    }
    let value = parse_masked(p, tok, field, value, true)?;
    Ok(Action::SetField { field, value })
}

/// Parses `NAME`, `NAME[]`, `NAME[N]` or `NAME[A..B]`.
fn parse_range(p: &Parser<'_>, tok: Tok<'_>, s: &str) -> Result<FieldRange, ParseError> {
    let (name, range) = match s.split_once('[') {
        Some((n, r)) => {
            let r = r.strip_suffix(']').ok_or_else(|| {
                p.bad(
                    tok,
                    "bit range",
                    s,
                    "FIELD[], FIELD[N] or FIELD[START..END]",
                )
            })?;
            (n, Some(r))
        }
        None => (s, None),
    };
    let field = lookup_field(p, tok, name)?;
    if field.kind() == ValueKind::Port {
        return Err(p.err(tok, FlowError::NotReadable(field).into()));
    }
    let whole = FieldRange::whole(field);
    let r = match range {
        None | Some("") => whole,
        Some(r) => {
            let bit = |b: &str| {
                parse_u64(b)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| p.bad(tok, "bit range", s, "bit numbers like [0..15]"))
            };
            let (start, end) = match r.split_once("..") {
                Some((a, b)) => (bit(a)?, bit(b)?),
                None => {
                    let b = bit(r)?;
                    (b, b)
                }
            };
            FieldRange { field, start, end }
        }
    };
    if !r.is_valid() {
        return Err(p.err(
            tok,
            FlowError::BadRange {
                field,
                start: r.start,
                end: r.end,
                bits: field.bits(),
            }
            .into(),
        ));
    }
    Ok(r)
}

fn parse_move(p: &Parser<'_>, tok: Tok<'_>, arg: &str) -> Result<Action, ParseError> {
    let (src, dst) = split_arrow(p, tok, "move", arg)?;
    let src = parse_range(p, tok, src)?;
    let dst = parse_range(p, tok, dst)?;
    Ok(Action::Move { src, dst })
}

fn parse_load(p: &Parser<'_>, tok: Tok<'_>, arg: &str) -> Result<Action, ParseError> {
    let (value, dst) = split_arrow(p, tok, "load", arg)?;
    let dst = parse_range(p, tok, dst)?;
    let width = u32::from(dst.bits());
    let v = parse_u128(value)
        .filter(|v| width >= 128 || v >> width == 0)
        .ok_or_else(|| {
            p.bad(
                tok,
                "load",
                value,
                &format!("a number that fits in {width} bits"),
            )
        })?;
    let value = from_u128(dst.field, v << dst.start);
    let mask = from_u128(dst.field, dst.mask_u128());
    Ok(Action::SetField {
        field: dst.field,
        value: Masked { value, mask },
    })
}

/// The value of `field`'s kind whose bits are `v`.
pub(crate) fn from_u128(field: Field, v: u128) -> FieldValue {
    match field.kind() {
        ValueKind::Mac => FieldValue::Mac(MacAddr::from_u64(v as u64)),
        ValueKind::Ipv4 => FieldValue::Ipv4(Ipv4Addr::from(v as u32)),
        ValueKind::Ipv6 => FieldValue::Ipv6(Ipv6Addr::from(v)),
        ValueKind::Uint | ValueKind::Port => FieldValue::Uint(v as u64),
    }
}
