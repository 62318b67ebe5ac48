//! Property tests: decode(encode(m)) == m, and the decoder never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tabby_bgp::codec::{self, Ctx};
use tabby_bgp::*;

fn prefix_v4() -> impl Strategy<Value = Prefix> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap())
}

fn prefix_v6() -> impl Strategy<Value = Prefix> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap())
}

fn segment(confed: bool) -> impl Strategy<Value = Segment> {
    let kinds = if confed {
        vec![SegmentKind::Set, SegmentKind::Sequence, SegmentKind::ConfedSequence, SegmentKind::ConfedSet]
    } else {
        vec![SegmentKind::Set, SegmentKind::Sequence]
    };
    (proptest::sample::select(kinds), prop::collection::vec(any::<u32>(), 1..8))
        .prop_map(|(kind, asns)| Segment { kind, asns })
}

fn attrs(four: bool) -> impl Strategy<Value = PathAttrs> {
    let unknown_code =
        any::<u8>().prop_filter("unknown code", |c| ![1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 17, 18].contains(c));
    (
        (
            proptest::option::of(proptest::sample::select(vec![Origin::Igp, Origin::Egp, Origin::Incomplete])),
            proptest::option::of(prop::collection::vec(segment(four), 0..4).prop_map(AsPath)),
            proptest::option::of(
                any::<u32>()
                    .prop_map(Ipv4Addr::from)
                    .prop_filter("valid nh", |a| !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()),
            ),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            any::<bool>(),
        ),
        (
            proptest::option::of((any::<u32>(), any::<u32>().prop_map(Ipv4Addr::from))),
            prop::collection::vec(any::<u32>(), 0..5),
            proptest::option::of(any::<u32>().prop_map(Ipv4Addr::from)),
            prop::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 0..4),
            prop::collection::vec(
                (unknown_code, any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(
                    |(code, partial, value)| RawAttr { flags: 0xc0 | if partial { 0x20 } else { 0 }, code, value },
                ),
                0..3,
            ),
        ),
    )
        .prop_map(
            move |(
                (origin, as_path, next_hop, med, local_pref, atomic_aggregate),
                (aggregator, communities, originator_id, cluster_list, mut unknown),
            )| {
                // Repeated attributes are discarded by the decoder: keep one per code.
                let mut seen = std::collections::HashSet::new();
                unknown.retain(|u| seen.insert(u.code));
                // On 2-octet sessions an AGGREGATOR with a real 2-octet AS makes AS4_PATH ignored
                // (RFC 6793 §4.2.3), so only generate 4-octet or AS_TRANS aggregators there.
                let aggregator = aggregator.map(|(a, ip)| if four || a > 0xffff { (a, ip) } else { (0x10000 | a, ip) });
                PathAttrs {
                    origin,
                    as_path,
                    next_hop,
                    med,
                    local_pref,
                    atomic_aggregate,
                    aggregator,
                    communities,
                    originator_id,
                    cluster_list,
                    unknown,
                }
            },
        )
}

fn update(four: bool) -> impl Strategy<Value = Update> {
    (
        prop::collection::vec(prefix_v4(), 0..20),
        attrs(four),
        proptest::option::of(prop_oneof![
            (any::<u32>(), prop::collection::vec(prefix_v4(), 0..20)).prop_map(|(nh, nlri)| {
                MpReach {
                    family: Family::Ipv4Unicast,
                    next_hop: IpAddr::V4(Ipv4Addr::from(nh)),
                    link_local: None,
                    nlri,
                }
            }),
            (any::<u128>(), proptest::option::of(any::<u128>()), prop::collection::vec(prefix_v6(), 0..20)).prop_map(
                |(nh, ll, nlri)| MpReach {
                    family: Family::Ipv6Unicast,
                    next_hop: IpAddr::V6(Ipv6Addr::from(nh)),
                    link_local: ll.map(Ipv6Addr::from),
                    nlri,
                }
            ),
        ]),
        proptest::option::of(prop_oneof![
            prop::collection::vec(prefix_v4(), 0..20)
                .prop_map(|w| MpUnreach { family: Family::Ipv4Unicast, withdrawn: w }),
            prop::collection::vec(prefix_v6(), 0..20)
                .prop_map(|w| MpUnreach { family: Family::Ipv6Unicast, withdrawn: w }),
        ]),
        prop::collection::vec(prefix_v4(), 0..20),
    )
        .prop_map(|(withdrawn, attrs, mp_reach, mp_unreach, nlri)| {
            let mut u = Update { withdrawn, attrs, mp_reach, mp_unreach, nlri, treat_as_withdraw: None };
            // The decoder flags announcements lacking mandatory attributes; mirror that.
            let a = &u.attrs;
            let announcing = !u.nlri.is_empty() || u.mp_reach.is_some();
            if announcing && a.origin.is_none() {
                u.treat_as_withdraw = Some(TreatAsWithdraw::Missing(1));
            } else if announcing && a.as_path.is_none() {
                u.treat_as_withdraw = Some(TreatAsWithdraw::Missing(2));
            } else if !u.nlri.is_empty() && a.next_hop.is_none() {
                u.treat_as_withdraw = Some(TreatAsWithdraw::Missing(3));
            }
            u
        })
}

fn capability() -> impl Strategy<Value = Capability> {
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(afi, safi)| Capability::Multiprotocol { afi, safi }),
        Just(Capability::RouteRefresh),
        any::<u32>().prop_map(Capability::FourOctetAs),
        (
            any::<bool>(),
            any::<bool>(),
            0u16..4096,
            prop::collection::vec((any::<u16>(), any::<u8>(), any::<bool>()), 0..4)
        )
            .prop_map(|(restarting, notification, restart_time, families)| {
                Capability::GracefulRestart(GracefulRestart { restarting, notification, restart_time, families })
            }),
        prop::collection::vec((any::<u16>(), any::<u8>(), any::<u8>()), 1..4).prop_map(Capability::AddPath),
        ((70u8..=255), prop::collection::vec(any::<u8>(), 0..30))
            .prop_map(|(code, value)| Capability::Unknown { code, value }),
    ]
}

fn message(four: bool) -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>().prop_filter("hold", |h| *h != 1 && *h != 2),
            1u32..,
            prop::collection::vec(capability(), 0..5)
        )
            .prop_map(|(my_as, hold_time, id, capabilities)| Message::Open(Open {
                my_as,
                hold_time,
                router_id: Ipv4Addr::from(id),
                capabilities,
            })),
        update(four).prop_map(Message::Update),
        (any::<u8>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(code, subcode, data)| Message::Notification(Notification { code, subcode, data })),
        Just(Message::Keepalive),
        (any::<u16>(), any::<u8>(), any::<u8>())
            .prop_map(|(afi, subtype, safi)| { Message::RouteRefresh(RouteRefresh { afi, subtype, safi }) }),
    ]
}

fn roundtrip(m: &Message, ctx: &Ctx) -> Result<(), TestCaseError> {
    let bytes = match codec::to_bytes(m, ctx) {
        Ok(b) => b,
        // Generated messages may exceed 4096 octets; those cannot be sent at all.
        Err(codec::EncodeError::TooLarge(_)) => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("encode: {e}"))),
    };
    let (back, used) = codec::decode(&bytes, ctx)
        .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?
        .ok_or_else(|| TestCaseError::fail("incomplete"))?;
    prop_assert_eq!(used, bytes.len());
    prop_assert_eq!(&back, m);
    // Every strict prefix of a message is incomplete, never an error or a panic.
    for cut in [0, 18, bytes.len() / 2, bytes.len() - 1] {
        prop_assert!(matches!(codec::decode(&bytes[..cut.min(bytes.len() - 1)], ctx), Ok(None)));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn roundtrip_four_octet(m in message(true)) {
        roundtrip(&m, &Ctx { four_octet_as: true })?;
    }

    #[test]
    fn roundtrip_two_octet_with_as4_path(m in message(false)) {
        roundtrip(&m, &Ctx { four_octet_as: false })?;
    }

    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), four in any::<bool>()) {
        let mut b = bytes;
        // Mostly valid headers so the body decoders are reached.
        if b.len() >= 19 {
            b[..16].fill(0xff);
            let len = b.len() as u16;
            b[16..18].copy_from_slice(&len.to_be_bytes());
            b[18] = 1 + b[18] % 5;
        }
        let _ = codec::decode(&b, &Ctx { four_octet_as: four });
    }
}

#[test]
fn end_of_rib_markers() {
    for f in Family::ALL {
        let m = Message::Update(Update::end_of_rib(f));
        let bytes = codec::to_bytes(&m, &Ctx::default()).unwrap();
        let (Message::Update(u), _) = codec::decode(&bytes, &Ctx::default()).unwrap().unwrap() else {
            panic!("not an update")
        };
        assert_eq!(u.end_of_rib_family(), Some(f));
    }
    assert_eq!(
        codec::to_bytes(&Message::Update(Update::end_of_rib(Family::Ipv4Unicast)), &Ctx::default()).unwrap().len(),
        23
    );
}

#[test]
fn as4_path_sent_to_two_octet_peers() {
    let attrs = PathAttrs {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(vec![4_200_000_000, 65001, 70000])),
        next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
        ..PathAttrs::default()
    };
    let m = Message::Update(Update { attrs, nlri: vec!["10.1.0.0/16".parse().unwrap()], ..Update::default() });
    let bytes = codec::to_bytes(&m, &Ctx { four_octet_as: false }).unwrap();
    // AS_PATH carries AS_TRANS (0x5ba0) in place of the 4-octet ASes.
    let as_path = [0x40, 2, 8, 2, 3, 0x5b, 0xa0, 0xfd, 0xe9, 0x5b, 0xa0];
    assert!(bytes.windows(as_path.len()).any(|w| w == as_path));
    // AS4_PATH (17) is present, optional transitive.
    assert!(bytes.windows(2).any(|w| w == [0xc0, 17]));
    let (back, _) = codec::decode(&bytes, &Ctx { four_octet_as: false }).unwrap().unwrap();
    assert_eq!(back, m);
}

#[test]
fn encode_routes_splits_into_max_size_messages() {
    let attrs = PathAttrs {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(vec![65000])),
        next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
        ..PathAttrs::default()
    };
    let prefixes: Vec<Prefix> =
        (0..5000u32).map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i << 8))), 24).unwrap()).collect();
    let mut out = Vec::new();
    codec::encode_routes(Some((&attrs, None)), Family::Ipv4Unicast, &prefixes, &Ctx::default(), &mut out).unwrap();
    let mut got = Vec::new();
    let mut buf = &out[..];
    while let Some((m, n)) = codec::decode(buf, &Ctx::default()).unwrap() {
        assert!(n <= 4096);
        let Message::Update(u) = m else { panic!() };
        got.extend(u.nlri);
        buf = &buf[n..];
    }
    assert_eq!(got, prefixes);
    let v6: Vec<Prefix> = (0..3000u128)
        .map(|i| Prefix::new(IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (i << 64))), 64).unwrap())
        .collect();
    let mut out = Vec::new();
    codec::encode_routes(
        Some((&attrs, Some("2001:db8::1".parse().unwrap()))),
        Family::Ipv6Unicast,
        &v6,
        &Ctx::default(),
        &mut out,
    )
    .unwrap();
    codec::encode_routes(None, Family::Ipv6Unicast, &v6, &Ctx::default(), &mut out).unwrap();
    let mut ann = Vec::new();
    let mut wd = Vec::new();
    let mut buf = &out[..];
    while let Some((m, n)) = codec::decode(buf, &Ctx::default()).unwrap() {
        let Message::Update(u) = m else { panic!() };
        ann.extend(u.mp_reach.map(|m| m.nlri).unwrap_or_default());
        wd.extend(u.mp_unreach.map(|m| m.withdrawn).unwrap_or_default());
        buf = &buf[n..];
    }
    assert_eq!(ann, v6);
    assert_eq!(wd, v6);
}

/// Replays the fuzzing seed corpus with the fuzz target's checks (runs on stable, in CI).
#[test]
fn fuzz_seed_corpus_decodes_and_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let e_name = path.display().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let ctx = Ctx { four_octet_as: true };
        let (m, used) = match codec::decode(&bytes, &ctx) {
            Ok(Some(x)) => x,
            other => panic!("{}: {other:?}", e_name),
        };
        assert_eq!(used, bytes.len());
        if !matches!(&m, Message::Update(u) if u.treat_as_withdraw.is_some()) {
            let again = codec::to_bytes(&m, &ctx).unwrap();
            assert_eq!(codec::decode(&again, &ctx).unwrap().unwrap().0, m);
        }
        let _ = codec::decode(&bytes, &Ctx { four_octet_as: false });
        n += 1;
    }
    assert!(n >= 10, "seed corpus has {n} files");
}
