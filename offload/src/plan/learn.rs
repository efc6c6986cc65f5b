//! Learned drops: a conversation software refuses between two plans goes down to the
//! NIC when its first packet is denied, so its retries and next connections are
//! dropped in hardware before the next plan has counted them.
//!
//! A learned drop is an exact-flow entry ([`super::Role::ExactFlow`]) made from one
//! packet instead of the hit counters: the full policy's verdict for its tuple (or
//! conversation, when no rule looks at source ports), with the same statefulness
//! rules. TCP drops take connection attempts only (SYN without ACK); other protocols
//! go down only where stateless drops are on and the drop meets no flow software
//! holds and no reply of a flow the endpoint may open. Such an entry needs no covers,
//! so it may sit above every decision of the plan.

use capo_policy::{Packet, Protocol, State};

use crate::atom::Atom;
use crate::caps::{NicCaps, OffloadMode};
use crate::lower::{OffloadProgram, TcpFlags};

use super::exact::{entry_atom, wire_domain, SparedFlows};
use super::{FlowResults, StatelessDrops};

/// A drop the NIC may learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedDrop {
    /// The generation whose policy denies it.
    pub generation: u64,
    /// Domain index (the endpoint the packet went to).
    pub domain: usize,
    /// The packet it was learned from.
    pub packet: Packet,
    /// The NIC match.
    pub atom: Atom,
}

/// Policy results kept per conversation before the learner starts afresh (bounds
/// its memory under a scan of many conversations).
const MAX_REMEMBERED: usize = 65_536;

/// Decides which denied packets may be learned as drops, for one lowered program
/// (one generation): it keeps the policy results of the conversations it has met.
#[derive(Debug, Default)]
pub struct DropLearner {
    generation: Option<u64>,
    results: FlowResults,
}

impl DropLearner {
    /// A learner with nothing remembered.
    pub fn new() -> Self {
        DropLearner::default()
    }

    /// The drop for `pkt` (with `tcp_flags`), a packet from the wire that software
    /// denied under `program`'s generation (lowered from `state`), on a device with
    /// `caps`; `stateless` as the planner takes it. `None` when no NIC entry may
    /// take it: a TCP packet that is not a connection attempt (a deny's stateful
    /// remainder), a packet from a local source or to no policed endpoint, one a
    /// `log` rule matches, one the full policy allows, or one the device cannot
    /// express or that a stateless drop could not take safely.
    pub fn drop_for(
        &mut self,
        state: &State,
        program: &OffloadProgram,
        caps: &NicCaps,
        pkt: &Packet,
        tcp_flags: Option<u8>,
        stateless: &StatelessDrops,
    ) -> Option<LearnedDrop> {
        if self.generation != Some(program.generation) || self.results.remembered() > MAX_REMEMBERED
        {
            self.results = FlowResults::default();
            self.generation = Some(program.generation);
        }
        if caps.mode() == OffloadMode::SoftwareOnly {
            return None;
        }
        let tcp = pkt.protocol == Protocol::TCP;
        if tcp && !tcp_flags.is_some_and(|f| TcpFlags::SynOnly.accepts(f)) {
            return None;
        }
        let (domain, dom) = wire_domain(program, pkt)?;
        if self.results.logged(state, dom, pkt, tcp_flags)
            || self.results.allowed(state, program, pkt, tcp_flags)
        {
            return None;
        }
        let conversations = self.results.blind(state);
        // The held flows are only looked at for a stateless drop.
        let spared = if tcp {
            None
        } else {
            SparedFlows::of(stateless)
        };
        let atom = entry_atom(pkt, false, dom, caps, conversations, spared.as_ref())?;
        Some(LearnedDrop {
            generation: program.generation,
            domain,
            packet: *pkt,
            atom,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atom::FlagClass;
    use crate::flow::{TCP_ACK, TCP_SYN};
    use crate::testutils::{self as fixture, tcp_sample, udp_sample};
    use capo_policy::{Action, IcmpMatch, Rule, L4};

    fn ping_from(src: [u8; 4]) -> Packet {
        let mut p = udp_sample(src, 0, 1).packet;
        p.protocol = Protocol::ICMP;
        p.l4 = L4::Icmp {
            icmp_type: 8,
            code: 0,
        };
        p
    }

    #[test]
    fn a_refused_connection_attempt_is_learned_for_its_whole_conversation() {
        // Port 80 from 172.16.0.0/24 is allowed; the rest is refused.
        let (s, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let caps = NicCaps::mlx5(64);
        let mut learner = DropLearner::new();
        let refused = tcp_sample([172, 16, 1, 1], 80, 1).packet;
        let d = learner
            .drop_for(
                &s,
                &program,
                &caps,
                &refused,
                Some(TCP_SYN),
                &StatelessDrops::Off,
            )
            .expect("a refused SYN is learned");
        assert_eq!((d.generation, d.domain, d.packet), (1, 0, refused));
        assert_eq!(d.atom.flags, FlagClass::SynOnly);
        // No rule looks at source ports: the next connections (new ports) meet it.
        assert_eq!(d.atom.sport, None);
        let mut next = refused;
        next.l4 = L4::Ports {
            src: 50_000,
            dst: 80,
        };
        assert!(d.atom.contains(&next, Some(TCP_SYN)));
        assert!(!d.atom.contains(&next, Some(TCP_SYN | TCP_ACK)));
        // What the policy allows, and TCP that is not a connection attempt (a deny's
        // stateful remainder: software may hold the flow), are not learned.
        let allowed = tcp_sample([172, 16, 0, 1], 80, 1).packet;
        for (pkt, flags) in [
            (allowed, Some(TCP_SYN)),
            (refused, Some(TCP_ACK)),
            (refused, None),
        ] {
            assert_eq!(
                learner.drop_for(&s, &program, &caps, &pkt, flags, &StatelessDrops::Off),
                None,
                "{pkt:?} {flags:?}"
            );
        }
        // A device that cannot match TCP flags cannot take it (e810).
        assert_eq!(
            learner.drop_for(
                &s,
                &program,
                &NicCaps::e810(64),
                &refused,
                Some(TCP_SYN),
                &StatelessDrops::Off
            ),
            None
        );
    }

    #[test]
    fn a_source_port_rule_keeps_learned_drops_to_one_tuple() {
        let mut r = fixture::allow_tcp("0.0.0.0/0", 80);
        r.src.ports = vec![capo_policy::PortRange::new(1, 1023).unwrap()];
        let (s, program) = fixture::program(vec![r], vec![]);
        let refused = tcp_sample([172, 16, 1, 1], 80, 1).packet;
        let d = DropLearner::new()
            .drop_for(
                &s,
                &program,
                &NicCaps::mlx5(64),
                &refused,
                Some(TCP_SYN),
                &StatelessDrops::Off,
            )
            .expect("learned");
        assert!(d.atom.sport.is_some());
    }

    #[test]
    fn no_drop_is_learned_for_local_sources_logged_tuples_or_unpoliced_addresses() {
        let caps = NicCaps::mlx5(64);
        let refused = tcp_sample([172, 16, 1, 1], 80, 1).packet;
        let (s, program) = fixture::program(vec![Rule::any(Action::Log)], vec![]);
        assert_eq!(
            DropLearner::new().drop_for(
                &s,
                &program,
                &caps,
                &refused,
                Some(TCP_SYN),
                &StatelessDrops::Off
            ),
            None
        );
        let (s, program) = fixture::program(vec![], vec![]);
        let mut local = refused;
        local.src = local.dst;
        let mut elsewhere = refused;
        elsewhere.dst = "10.99.0.1".parse().unwrap();
        for pkt in [local, elsewhere] {
            assert_eq!(
                DropLearner::new().drop_for(
                    &s,
                    &program,
                    &caps,
                    &pkt,
                    Some(TCP_SYN),
                    &StatelessDrops::Off
                ),
                None,
                "{pkt:?}"
            );
        }
    }

    #[test]
    fn refused_pings_are_learned_only_where_they_cut_no_flow_software_holds() {
        let caps = NicCaps::mlx5(64);
        let (s, program) = fixture::program(vec![], vec![]);
        let ping = ping_from([172, 16, 0, 2]);
        let mut learner = DropLearner::new();
        // Stateless drops off: kept in software.
        assert_eq!(
            learner.drop_for(&s, &program, &caps, &ping, None, &StatelessDrops::Off),
            None
        );
        // Sparing nothing: learned.
        let d = learner
            .drop_for(
                &s,
                &program,
                &caps,
                &ping,
                None,
                &StatelessDrops::Sparing(vec![]),
            )
            .expect("learned");
        assert_eq!(d.atom.flags, FlagClass::Any);
        // An echo flow the endpoint opened towards the peer keeps it in software.
        let mut opened = ping;
        (opened.src, opened.dst) = (opened.dst, opened.src);
        assert_eq!(
            learner.drop_for(
                &s,
                &program,
                &caps,
                &ping,
                None,
                &StatelessDrops::Sparing(vec![opened])
            ),
            None
        );
        // So does an endpoint that may ping anywhere (the replies of its pings).
        let mut egress = Rule::any(Action::Allow);
        egress.protocol = Some(Protocol::ICMP);
        egress.icmp = Some(IcmpMatch {
            icmp_type: 8,
            code: None,
        });
        let (s, program) = fixture::program(vec![], vec![egress]);
        assert_eq!(
            DropLearner::new().drop_for(
                &s,
                &program,
                &caps,
                &ping,
                None,
                &StatelessDrops::Sparing(vec![])
            ),
            None
        );
    }

    #[test]
    fn the_learner_starts_afresh_for_another_generation() {
        let caps = NicCaps::mlx5(64);
        let refused = tcp_sample([172, 16, 1, 1], 80, 1).packet;
        let (s, program) = fixture::program(vec![], vec![]);
        let mut learner = DropLearner::new();
        assert!(learner
            .drop_for(
                &s,
                &program,
                &caps,
                &refused,
                Some(TCP_SYN),
                &StatelessDrops::Off
            )
            .is_some());
        // Generation 2 allows it: the result remembered for generation 1 is not used.
        let (s2, mut program2) =
            fixture::program(vec![fixture::allow_tcp("0.0.0.0/0", 80)], vec![]);
        program2.generation = 2;
        assert_eq!(
            learner.drop_for(
                &s2,
                &program2,
                &caps,
                &refused,
                Some(TCP_SYN),
                &StatelessDrops::Off
            ),
            None
        );
    }
}
