//! `capo bench npol`: upstream npol's matcher (the C plugin capo replaces) timed on the
//! same 5-tuples as capo's classifier, inside the same VPP.
//!
//! npol 26.06 is on no packet path (it is not wired into cnat before 26.10), so the
//! fair peer of capo's node is the function npol would run per new flow:
//! `int npol_match_func (u32 sw_if_index, u32 is_inbound, fa_5tuple_t *t, int is_ip6,
//! u8 *r_action)` (npol_match.h at tag v26.06). The plugin is built with hidden
//! visibility, so `vlib_get_plugin_symbol` cannot name it; the glue finds the loaded
//! plugin's base from its exported registration and adds the function's offset read
//! from the file's own symbol table ([`symbol_offset`]).
//!
//! This module holds the pure parts: the tuple file, the `fa_5tuple_t` layout, the
//! symbol lookup and the report. The caller must have configured npol on every
//! interface a tuple names: npol indexes its per-interface vector unchecked.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use capo_policy::{Packet, Protocol, L4};

use crate::generation::{SwIfIndex, VppDir};

/// One 5-tuple to decide: the interface, VPP's direction on it, the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple {
    /// The interface, as both npol and capo know it.
    pub sw_if_index: SwIfIndex,
    /// Received (`rx`, npol's `is_inbound = 1`) or sent (`tx`).
    pub dir: VppDir,
    /// The packet; ICMP type and code travel in the port fields, as in npol.
    pub packet: Packet,
}

/// A tuple file or command line that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BenchError {
    /// A line of the tuple file.
    #[error("tuple line {line}: {reason} (want `SW_IF_INDEX rx|tx PROTO SRC SPORT DST DPORT`)")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The command's arguments.
    #[error("usage: capo bench npol FILE [repeat N] [verdicts FILE]: {0}")]
    Usage(String),
    /// The file holds no tuple.
    #[error("the tuple file holds no tuple")]
    Empty,
}

/// `capo bench npol FILE [repeat N] [verdicts FILE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// The tuple file.
    pub tuples: PathBuf,
    /// Passes over the tuples (the first warms the caches and is not timed).
    pub repeat: u32,
    /// Where to write each tuple's two verdicts, one line per tuple.
    pub verdicts: Option<PathBuf>,
}

impl BenchArgs {
    /// Parses the command's arguments.
    pub fn parse(input: &str) -> Result<Self, BenchError> {
        let mut words = input.split_whitespace();
        match words.next() {
            Some("npol") => {}
            other => {
                return Err(BenchError::Usage(format!(
                    "unknown peer {:?}",
                    other.unwrap_or("")
                )))
            }
        }
        let tuples = words
            .next()
            .map(PathBuf::from)
            .ok_or_else(|| BenchError::Usage("no tuple file".into()))?;
        let mut args = BenchArgs {
            tuples,
            repeat: 5,
            verdicts: None,
        };
        while let Some(w) = words.next() {
            let value = words
                .next()
                .ok_or_else(|| BenchError::Usage(format!("`{w}` needs a value")))?;
            match w {
                "repeat" => {
                    args.repeat = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| BenchError::Usage(format!("bad repeat `{value}`")))?
                }
                "verdicts" => args.verdicts = Some(PathBuf::from(value)),
                _ => return Err(BenchError::Usage(format!("unknown argument `{w}`"))),
            }
        }
        Ok(args)
    }
}

/// Parses a tuple file: one `SW_IF_INDEX rx|tx PROTO SRC SPORT DST DPORT` per line
/// (PROTO a number; for ICMP the ports are type and code); `#` starts a comment.
pub fn parse_tuples(text: &str) -> Result<Vec<Tuple>, BenchError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| BenchError::Line {
            line: i + 1,
            reason,
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let [idx, dir, proto, src, sport, dst, dport] = f[..] else {
            return Err(bad(format!("{} fields", f.len())));
        };
        let num = |s: &str, what: &str| {
            s.parse::<u16>()
                .map_err(|_| bad(format!("bad {what} `{s}`")))
        };
        let addr = |s: &str| {
            s.parse::<IpAddr>()
                .map_err(|_| bad(format!("bad address `{s}`")))
        };
        let sw_if_index = idx
            .parse::<u32>()
            .map_err(|_| bad(format!("bad sw_if_index `{idx}`")))?;
        let dir = match dir {
            "rx" => VppDir::Rx,
            "tx" => VppDir::Tx,
            d => return Err(bad(format!("bad direction `{d}`"))),
        };
        let protocol = proto
            .parse::<u8>()
            .map(Protocol)
            .map_err(|_| bad(format!("bad protocol `{proto}`")))?;
        let (src, dst) = (addr(src)?, addr(dst)?);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(bad("mixed address families".into()));
        }
        let (sport, dport) = (num(sport, "port")?, num(dport, "port")?);
        let l4 = if protocol.is_icmp() {
            let ty = u8::try_from(sport).map_err(|_| bad(format!("bad ICMP type {sport}")))?;
            let code = u8::try_from(dport).map_err(|_| bad(format!("bad ICMP code {dport}")))?;
            L4::Icmp {
                icmp_type: ty,
                code,
            }
        } else if protocol.has_ports() {
            L4::Ports {
                src: sport,
                dst: dport,
            }
        } else {
            L4::None
        };
        out.push(Tuple {
            sw_if_index: SwIfIndex(sw_if_index),
            dir,
            packet: Packet {
                src,
                dst,
                protocol,
                l4,
            },
        });
    }
    if out.is_empty() {
        return Err(BenchError::Empty);
    }
    Ok(out)
}

/// The ACL plugin's `fa_5tuple_t` (acl/fa_node.h, 26.06), 48 bytes: IPv6 addresses at
/// 0 and 16, or IPv4 at 24 and 28 after zero padding; then `l4`: `port[2]` (host
/// order, ICMP type and code), `proto`. The rest (flags, packet info) stays zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct FaFiveTuple(pub [u8; 48]);

impl FaFiveTuple {
    /// The tuple npol reads for `pkt`.
    pub fn of(pkt: &Packet) -> Self {
        let mut b = [0u8; 48];
        match (pkt.src, pkt.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                b[24..28].copy_from_slice(&s.octets());
                b[28..32].copy_from_slice(&d.octets());
            }
            (s, d) => {
                b[0..16].copy_from_slice(&v6(s).octets());
                b[16..32].copy_from_slice(&v6(d).octets());
            }
        }
        let (p0, p1) = match pkt.l4 {
            L4::Ports { src, dst } => (src, dst),
            L4::Icmp { icmp_type, code } => (u16::from(icmp_type), u16::from(code)),
            L4::None => (0, 0),
        };
        b[32..34].copy_from_slice(&p0.to_ne_bytes());
        b[34..36].copy_from_slice(&p1.to_ne_bytes());
        b[36] = pkt.protocol.0;
        FaFiveTuple(b)
    }
}

fn v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// Why a symbol's offset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an ELF object `object` reads.
    #[error("{path} is not a readable ELF object: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// No symbol table entry (the file may be stripped).
    #[error("{path} has no symbol `{name}` (stripped?)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The symbol.
        name: String,
    },
}

/// The address of `name` relative to the object's load base, from its full symbol
/// table (`.symtab`, which holds hidden symbols `dlsym` cannot see).
pub fn symbol_offset(path: &Path, name: &str) -> Result<u64, SymbolError> {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(path).map_err(|source| SymbolError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|e| SymbolError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    file.symbols()
        .chain(file.dynamic_symbols())
        .find(|s| s.name() == Ok(name) && s.address() != 0)
        .map(|s| s.address())
        .ok_or_else(|| SymbolError::Missing {
            path: path.to_path_buf(),
            name: name.to_string(),
        })
}

/// One engine's pass over the tuples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineRun {
    /// TSC clocks per tuple, the median of the timed passes.
    pub clocks_per_tuple: f64,
    /// The fastest timed pass.
    pub clocks_min: f64,
    /// The slowest timed pass.
    pub clocks_max: f64,
    /// Tuples allowed.
    pub allowed: u64,
    /// Tuples denied.
    pub denied: u64,
}

/// What `capo bench npol` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Tuples.
    pub tuples: usize,
    /// Timed passes.
    pub passes: u32,
    /// npol_match_func.
    pub npol: EngineRun,
    /// capo's classifier on the same tuples (`None`: no generation polices them).
    pub capo: Option<EngineRun>,
    /// Tuples where the two verdicts differ (semantics, not error: npol has no tiers).
    pub differ: u64,
}

impl BenchReport {
    /// The CLI text: one line per engine, `key value` pairs a script can read.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, name: &str, r: &EngineRun| {
            let _ = writeln!(
                s,
                "{name}: tuples {} passes {} clocks-per-tuple {:.1} min {:.1} max {:.1} allowed {} denied {}",
                self.tuples,
                self.passes,
                r.clocks_per_tuple,
                r.clocks_min,
                r.clocks_max,
                r.allowed,
                r.denied
            );
        };
        line(&mut s, "npol_match_func", &self.npol);
        match &self.capo {
            Some(c) => {
                line(&mut s, "capo-classify", c);
                let _ = writeln!(s, "verdicts differ on {} tuples", self.differ);
            }
            None => s.push_str("capo-classify: no active generation polices these interfaces\n"),
        }
        s
    }
}

/// Runs `decide` over `items` `passes + 1` times (the first warms caches and is not
/// timed) and returns the median clocks per item by `clock`, the verdict counts and
/// each item's verdict (from the last pass).
pub fn time_engine<T>(
    items: &[T],
    passes: u32,
    clock: &dyn Fn() -> u64,
    mut decide: impl FnMut(&T) -> capo_policy::Verdict,
) -> (EngineRun, Vec<capo_policy::Verdict>) {
    let mut verdicts = vec![capo_policy::Verdict::Deny; items.len()];
    let mut per_pass = Vec::with_capacity(passes as usize);
    for pass in 0..=passes {
        let start = clock();
        for (item, v) in items.iter().zip(verdicts.iter_mut()) {
            *v = decide(item);
        }
        let clocks = clock().saturating_sub(start);
        if pass > 0 {
            per_pass.push(clocks as f64 / items.len().max(1) as f64);
        }
    }
    let allowed = verdicts
        .iter()
        .filter(|v| **v == capo_policy::Verdict::Allow)
        .count() as u64;
    let run = EngineRun {
        clocks_per_tuple: median(&mut per_pass),
        clocks_min: per_pass.first().copied().unwrap_or(0.0),
        clocks_max: per_pass.last().copied().unwrap_or(0.0),
        allowed,
        denied: items.len() as u64 - allowed,
    };
    (run, verdicts)
}

/// `allow` or `deny`, as the verdicts file spells them.
pub fn verdict_word(v: capo_policy::Verdict) -> &'static str {
    match v {
        capo_policy::Verdict::Allow => "allow",
        capo_policy::Verdict::Deny => "deny",
    }
}

/// The median of `xs` (sorted in place); 0 for none.
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_parse_and_refuse_with_their_line() {
        let t = parse_tuples(
            "# hdr\n3 tx 6 10.0.0.1 40000 10.0.0.2 80\n4 rx 1 10.0.0.2 8 10.0.0.9 0\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].sw_if_index, SwIfIndex(3));
        assert_eq!(t[0].dir, VppDir::Tx);
        assert_eq!(
            t[0].packet.l4,
            L4::Ports {
                src: 40000,
                dst: 80
            }
        );
        assert_eq!(
            t[1].packet.l4,
            L4::Icmp {
                icmp_type: 8,
                code: 0
            }
        );
        let e = parse_tuples("a\n3 up 6 10.0.0.1 1 10.0.0.2 2\n").unwrap_err();
        assert_eq!(e.to_string().split(':').next(), Some("tuple line 1"));
        let e = parse_tuples("3 up 6 10.0.0.1 1 10.0.0.2 2\n").unwrap_err();
        assert!(
            matches!(e, BenchError::Line { line: 1, ref reason } if reason.contains("direction"))
        );
        assert!(matches!(
            parse_tuples("3 rx 6 10.0.0.1 1 ::1 2"),
            Err(BenchError::Line { .. })
        ));
        assert!(matches!(
            parse_tuples("3 rx 1 10.0.0.1 300 10.0.0.2 0"),
            Err(BenchError::Line { .. })
        ));
        assert_eq!(parse_tuples("# nothing\n"), Err(BenchError::Empty));
    }

    #[test]
    fn args_parse() {
        let a = BenchArgs::parse("npol /x/t.txt repeat 3 verdicts /x/v.txt").unwrap();
        assert_eq!(a.repeat, 3);
        assert_eq!(a.verdicts.as_deref(), Some(Path::new("/x/v.txt")));
        assert_eq!(BenchArgs::parse("npol f").unwrap().repeat, 5);
        assert!(BenchArgs::parse("acl f").is_err());
        assert!(BenchArgs::parse("npol").is_err());
        assert!(BenchArgs::parse("npol f repeat 0").is_err());
        assert!(BenchArgs::parse("npol f repeat").is_err());
        assert!(BenchArgs::parse("npol f speed 3").is_err());
    }

    #[test]
    fn five_tuple_layout_is_the_acl_plugins() {
        let t = parse_tuples("1 rx 17 10.1.2.3 5353 10.4.5.6 53").unwrap();
        let b = FaFiveTuple::of(&t[0].packet).0;
        assert!(
            b[..24].iter().all(|&x| x == 0),
            "IPv4 sits after 24 bytes of padding"
        );
        assert_eq!(&b[24..32], &[10, 1, 2, 3, 10, 4, 5, 6]);
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 5353);
        assert_eq!(u16::from_ne_bytes([b[34], b[35]]), 53);
        assert_eq!(b[36], 17);
        assert!(b[37..].iter().all(|&x| x == 0));
        let t = parse_tuples("1 rx 58 fd00::1 128 fd00::2 0").unwrap();
        let b = FaFiveTuple::of(&t[0].packet).0;
        assert_eq!(b[0], 0xfd);
        assert_eq!(b[15], 1);
        assert_eq!(b[31], 2);
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 128);
        assert_eq!(std::mem::size_of::<FaFiveTuple>(), 48);
        assert_eq!(std::mem::align_of::<FaFiveTuple>(), 8);
    }

    #[test]
    fn symbol_offsets_come_from_the_full_symbol_table() {
        // This test binary's own symbol table holds this (non-exported) function.
        let exe = std::env::current_exe().unwrap();
        let off = symbol_offset(&exe, "main").unwrap();
        assert_ne!(off, 0);
        assert!(matches!(
            symbol_offset(&exe, "no_such_symbol_anywhere"),
            Err(SymbolError::Missing { .. })
        ));
        assert!(matches!(
            symbol_offset(Path::new("/nonexistent/capo.so"), "main"),
            Err(SymbolError::Read { .. })
        ));
    }

    #[test]
    fn engines_are_timed_on_every_pass_but_the_first() {
        use capo_policy::Verdict;
        use std::cell::Cell;
        let now = Cell::new(0u64);
        let clock = || now.get();
        let calls = Cell::new(0u32);
        let (run, verdicts) = time_engine(&[1u32, 2, 3, 4], 3, &clock, |x| {
            calls.set(calls.get() + 1);
            // The warm-up pass costs 100 per item, the timed ones 10.
            now.set(now.get() + if calls.get() <= 4 { 100 } else { 10 });
            if x % 2 == 0 {
                Verdict::Allow
            } else {
                Verdict::Deny
            }
        });
        assert_eq!(calls.get(), 16);
        assert_eq!(run.clocks_per_tuple, 10.0);
        assert_eq!((run.clocks_min, run.clocks_max), (10.0, 10.0));
        assert_eq!((run.allowed, run.denied), (2, 2));
        assert_eq!(
            verdicts,
            [Verdict::Deny, Verdict::Allow, Verdict::Deny, Verdict::Allow]
        );
    }

    #[test]
    fn report_renders_key_value_lines() {
        let run = EngineRun {
            clocks_per_tuple: 1234.56,
            clocks_min: 1000.0,
            clocks_max: 1500.0,
            allowed: 3,
            denied: 4,
        };
        let r = BenchReport {
            tuples: 7,
            passes: 5,
            npol: run,
            capo: Some(EngineRun {
                clocks_per_tuple: 50.0,
                ..run
            }),
            differ: 1,
        };
        let text = r.render();
        assert!(text.contains(
            "npol_match_func: tuples 7 passes 5 clocks-per-tuple 1234.6 min 1000.0 max 1500.0 allowed 3 denied 4"
        ));
        assert!(text.contains("capo-classify: tuples 7 passes 5 clocks-per-tuple 50.0"));
        assert!(text.contains("verdicts differ on 1 tuples"));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
