//! Criterion benches: the policy state's removals where the removed object sits
//! early in a long list (the first of 10,000 IP sets; an early member of a set of
//! 10,000), each removed and added back, as Felix sends them when a selector stops
//! being used or a pod is deleted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};

use capo_policy::{Cidr, IpSetId, IpSetKind, Member, State, Update};
use criterion::{criterion_group, criterion_main, Criterion};

const LONG: u32 = 10_000;

fn host(base: u32, i: u32) -> Member {
    Member::Net(Cidr::host(IpAddr::V4(Ipv4Addr::from(base + i))))
}

fn set_id(i: u32) -> IpSetId {
    IpSetId::new(format!("s:set-{i}")).unwrap()
}

/// 10,000 one-member sets, then one set of 10,000 members.
fn long_state() -> State {
    let mut state = State::new();
    for i in 0..LONG {
        state
            .apply(Update::IpSetReplace {
                id: set_id(i),
                kind: IpSetKind::Net,
                members: vec![host(0x0a00_0000, i)],
            })
            .unwrap();
    }
    state
        .apply(Update::IpSetReplace {
            id: IpSetId::new("s:large").unwrap(),
            kind: IpSetKind::Net,
            members: (0..LONG).map(|i| host(0x0b00_0000, i)).collect(),
        })
        .unwrap();
    state
}

fn removals(c: &mut Criterion) {
    let mut group = c.benchmark_group("state/removal");
    let mut s = long_state();
    let mut round = 0u32;
    // Each iteration removes the first set and adds it back (it then goes last, and
    // the next iteration takes the one after it, now first).
    group.bench_function("early set of 10000, removed and re-added", |b| {
        b.iter(|| {
            let i = round % LONG;
            round += 1;
            s.apply(Update::IpSetRemove(set_id(i))).unwrap();
            s.apply(Update::IpSetReplace {
                id: set_id(i),
                kind: IpSetKind::Net,
                members: vec![host(0x0a00_0000, i)],
            })
            .unwrap();
        })
    });
    let large = IpSetId::new("s:large").unwrap();
    let mut round = 0u32;
    group.bench_function(
        "early member of a set of 10000, removed and re-added",
        |b| {
            b.iter(|| {
                let m = host(0x0b00_0000, round % LONG);
                round += 1;
                s.apply(Update::IpSetDelta {
                    id: large.clone(),
                    added: vec![],
                    removed: vec![m],
                })
                .unwrap();
                s.apply(Update::IpSetDelta {
                    id: large.clone(),
                    added: vec![m],
                    removed: vec![],
                })
                .unwrap();
            })
        },
    );
    group.finish();
}

criterion_group!(benches, removals);
criterion_main!(benches);
