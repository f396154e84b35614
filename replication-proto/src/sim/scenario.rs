//! What one seed exercises: the kind of run, the link, the fault rates, the
//! node settings.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::machine::{AfterSb0, Fencing, NodeConfig, ResyncControl, SplitBrainPolicy};
use crate::simkit::rate_stream;
use crate::wire::{features, Protocol};

/// What one seed exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Link resets, partitions, admin disconnects, verify, invalidate, a
    /// Secondary crash: no acknowledged write may be lost.
    Network,
    /// One crash (power loss) of the Primary, then failover or restart.
    PrimaryCrash,
    /// Both promoted while partitioned: must be detected, then recovered
    /// with discard-my-data, or by after-sb-0pri (see [`SbAuto`]).
    SplitBrain,
}

/// How a split-brain run recovers once both nodes detected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SbAuto {
    /// The admin's `connect --discard-my-data` on the node promoted second.
    Manual,
    /// after-sb-0pri = discard-younger-primary: both demoted and connected
    /// again, the node promoted last loses.
    Younger,
    /// after-sb-0pri = discard-older-primary: the node promoted first loses.
    Older,
}

/// The link between the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Bandwidth of each direction; 0: unlimited (a frame takes only the
    /// latency). With a limit, a frame waits until every byte queued
    /// before it on its direction has left (the sender's socket buffer and
    /// a router's queue): the queueing that held pings behind resync data.
    pub bytes_per_ms: u64,
    /// Ping and PingAck travel on a connection of their own (the daemon's
    /// ping connection, [`features::PING_CONN`]), which waits for no bulk
    /// data, only for the latency. Without: they queue with the rest.
    pub ping_conn: bool,
}

impl Link {
    pub const UNLIMITED: Link = Link {
        bytes_per_ms: 0,
        ping_conn: true,
    };
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub kind: Kind,
    /// SplitBrain runs: how they recover.
    pub sb_auto: SbAuto,
    /// Both nodes run a before-resync-target handler (which sometimes
    /// fails: the resync then waits for the next connection).
    pub before_target: bool,
    pub protocol: Protocol,
    pub csums: bool,
    pub failover: bool,
    pub duration_ms: u64,
    pub data_bytes: u64,
    pub al_extents: u32,
    /// PrimaryCrash: both nodes freeze their I/O when they lose the peer
    /// while Primary (`freeze-on-disconnect`, as the cluster agent arms it);
    /// the Secondary stops answering for a while (a partition, a SIGSTOP),
    /// and the frozen Primary either crashes or is resumed (as the agent
    /// does once the witness knows its new generation).
    pub freeze: bool,
    /// PrimaryCrash with failover: the promoted survivor crashes too, while
    /// it is the sync source of the restarted first Primary.
    pub crash_sync_source: bool,
    /// Resync bytes per second (0 = unlimited); a limit keeps the resync
    /// running long enough for a crash to hit it.
    pub resync_rate: u64,
    /// `[net] fencing` on both nodes: a Primary that loses its peer runs
    /// the fence-peer handler, whose exit code the run draws (`nodes.rs`).
    pub fencing: Fencing,
    pub link: Link,
    /// After `duration_ms`, how long the pair may take to converge.
    pub settle_ms: u64,
    pub rates: Rates,
    /// `on-io-error = "detach"`, and disks that fail (network runs only).
    pub detach: bool,
    /// The dynamic resync rate controller (off in most seeds; never with
    /// `crash_sync_source`, whose slow fixed rate keeps the resync running
    /// until the crash).
    pub resync_control: ResyncControl,
}

/// How often faults strike and how slow things are in one run. Each seed
/// draws its own within the bounds below (TigerBeetle's VOPR does the
/// same): some seeds hammer the link, others barely touch it. They are
/// part of the [`Scenario`], so the failure report and `--verbose` print
/// them. Per-mille rates are chances per step of the run (a step comes
/// every 0.2 to 2 ms of simulated time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Network runs: the link resets (both ends see it drop).
    pub reset_pm: u32,
    /// Network runs: a partition of 20 to 300 ms starts.
    pub partition_pm: u32,
    /// Network runs: a node is disconnected by its admin (and reconnected).
    pub disconnect_pm: u32,
    /// Network runs: the Secondary loses power (once per run).
    pub secondary_crash_pm: u32,
    /// PrimaryCrash runs: the synced Primary is scheduled to lose power.
    pub primary_crash_pm: u32,
    /// Network runs: one write's Data frame in this many is damaged on the
    /// link (the receiver's checksum refuses it).
    pub damage_one_in: u32,
    /// Upper bound of a frame's latency, in µs (from 20 µs).
    pub net_us: u64,
    /// Upper bound of a disk read's or write's latency, in µs (from 5 µs).
    pub disk_us: u64,
    /// Upper bound of a disk flush's latency, in µs (from 50 µs).
    pub flush_us: u64,
    /// Chance that a block in a disk's volatile cache survives a power loss.
    pub cache_survives: f64,
}

impl Rates {
    /// The rates every seed used before they were drawn, kept for the
    /// fixed scenarios (the slow link).
    pub const FIXED: Rates = Rates {
        reset_pm: 25,
        partition_pm: 15,
        disconnect_pm: 5,
        secondary_crash_pm: 5,
        primary_crash_pm: 40,
        damage_one_in: 400,
        net_us: 400,
        disk_us: 300,
        flush_us: 600,
        cache_survives: 0.5,
    };

    /// The rates `seed` draws, each within its bounds (around
    /// [`Rates::FIXED`]), from a stream of their own: the rest of the
    /// scenario is what the seed drew before.
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        let mut r = rate_stream(seed, 0x0fa7_e5ee_d000);
        Self {
            reset_pm: r.gen_range(5..=50),
            partition_pm: r.gen_range(5..=30),
            disconnect_pm: r.gen_range(2..=10),
            secondary_crash_pm: r.gen_range(2..=10),
            primary_crash_pm: r.gen_range(15..=80),
            damage_one_in: r.gen_range(100..=1000),
            net_us: r.gen_range(100..=1000),
            disk_us: r.gen_range(50..=1000),
            flush_us: r.gen_range(200..=2000),
            cache_survives: r.gen_range(0.1..0.9),
        }
    }
}

impl Scenario {
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5ce7_a710);
        let kind = match r.gen_range(0..10) {
            0..=4 => Kind::Network,
            5..=7 => Kind::PrimaryCrash,
            _ => Kind::SplitBrain,
        };
        let protocol = match r.gen_range(0..4) {
            0 => Protocol::A,
            1 => Protocol::B,
            _ => Protocol::C,
        };
        let csums = r.gen_bool(0.3);
        let failover = r.gen_bool(0.6);
        let duration_ms = r.gen_range(300..1500);
        let al_extents = r.gen_range(1..4);
        // Drawn from their own stream so the scenarios above stay the same
        // for every seed that existed before these were added.
        let mut x = ChaCha8Rng::seed_from_u64(seed ^ 0x1551_e016);
        let crash = kind == Kind::PrimaryCrash;
        let freeze = crash && x.gen_bool(0.3);
        let crash_sync_source = crash && failover && x.gen_bool(0.4);
        // Its own stream too: the seeds without fencing stay as they were.
        // Not in the split-brain runs: they promote both nodes on purpose,
        // and a Primary promoted alone under fencing holds its writes, so
        // its generation is not one to keep (`UNACKED_GEN`): the handshake
        // then refuses it as a sync target ("make it secondary first")
        // instead of reporting the split brain these runs check.
        let fencing = match ChaCha8Rng::seed_from_u64(seed ^ 0xfe9c_e5ee).gen_range(0..4) {
            _ if kind == Kind::SplitBrain => Fencing::DontCare,
            0 | 1 => Fencing::DontCare,
            2 => Fencing::ResourceOnly,
            _ => Fencing::ResourceAndStonith,
        };
        // Its own stream: the seeds before this was added stay the same.
        let sb_auto = match ChaCha8Rng::seed_from_u64(seed ^ 0x5b_a070).gen_range(0..3) {
            _ if kind != Kind::SplitBrain => SbAuto::Manual,
            0 => SbAuto::Manual,
            1 => SbAuto::Younger,
            _ => SbAuto::Older,
        };
        let before_target = ChaCha8Rng::seed_from_u64(seed ^ 0xb4_7a6e).gen_bool(0.5);
        let resync_rate = if crash_sync_source {
            x.gen_range(8u64..48) << 20
        } else {
            0
        };
        Self {
            kind,
            sb_auto,
            before_target,
            protocol,
            csums,
            failover,
            duration_ms,
            data_bytes: 16 << 20,
            al_extents,
            freeze,
            crash_sync_source,
            resync_rate,
            fencing,
            // One seed in five on a slow link (2 to 16 MB/s against a
            // 60 ms timeout: the resync window alone queues 128 ms to 1 s),
            // with the ping connection the daemon has.
            link: if r.gen_ratio(1, 5) {
                Link {
                    bytes_per_ms: r.gen_range(2048..16384),
                    ping_conn: true,
                }
            } else {
                Link::UNLIMITED
            },
            settle_ms: 200_000,
            rates: Rates::from_seed(seed),
            // Its own stream: the other draws stay as they were.
            detach: kind == Kind::Network
                && ChaCha8Rng::seed_from_u64(seed ^ 0xd15c_1e55).gen_bool(0.5),
            resync_control: if crash_sync_source {
                ResyncControl::default()
            } else {
                resync_control_from_seed(seed)
            },
        }
    }
}

/// One seed in three runs the resync controller, with settings drawn from
/// a stream of its own (the other draws stay as they were): fill target or
/// delay target, a c-max-rate from slow to fast, a c-min-rate or none.
fn resync_control_from_seed(seed: u64) -> ResyncControl {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0xc0_7a01);
    if !r.gen_ratio(1, 3) {
        return ResyncControl::default();
    }
    let max_rate_bytes_per_s = r.gen_range(1u64..=200) << 20;
    ResyncControl {
        plan_ahead_ds: r.gen_range(1..=40),
        fill_target_bytes: if r.gen_bool(0.5) {
            r.gen_range(64u64..=4096) << 10
        } else {
            0
        },
        delay_target_ds: r.gen_range(1..=20),
        max_rate_bytes_per_s,
        min_rate_bytes_per_s: if r.gen_bool(0.7) {
            r.gen_range(256u64 << 10..=max_rate_bytes_per_s / 2)
        } else {
            0
        },
    }
}

pub(super) fn cfg(name: &str, peer: &str, sc: &Scenario) -> NodeConfig {
    NodeConfig {
        resource: "r0".into(),
        node: name.into(),
        peer: peer.into(),
        protocol: sc.protocol,
        data_bytes: sc.data_bytes,
        secret: b"sim-secret".to_vec(),
        timeout_ms: 60,
        ping_int_ms: 20,
        ko_count: 4,
        max_buffers: 64,
        resync_rate: sc.resync_rate,
        resync_control: sc.resync_control,
        csums: sc.csums,
        al_extents: sc.al_extents,
        split_brain: SplitBrainPolicy {
            after_sb_0pri: match sc.sb_auto {
                SbAuto::Manual => AfterSb0::Disconnect,
                SbAuto::Younger => AfterSb0::DiscardYoungerPrimary,
                SbAuto::Older => AfterSb0::DiscardOlderPrimary,
            },
            ..SplitBrainPolicy::default()
        },
        features: features::ALL,
        fencing: sc.fencing,
        on_io_error_detach: sc.detach,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each seed draws its own rates, within the bounds, the same on every
    /// replay; the rest of the scenario is what the seed drew before.
    #[test]
    fn rates_are_drawn_from_the_seed_within_bounds() {
        let all: Vec<Rates> = (0..500).map(Rates::from_seed).collect();
        for r in &all {
            assert!((5..=50).contains(&r.reset_pm), "{r:?}");
            assert!((5..=30).contains(&r.partition_pm), "{r:?}");
            assert!((15..=80).contains(&r.primary_crash_pm), "{r:?}");
            assert!((100..=1000).contains(&r.damage_one_in), "{r:?}");
            assert!((0.1..0.9).contains(&r.cache_survives), "{r:?}");
        }
        assert_eq!(Rates::from_seed(7), Rates::from_seed(7));
        assert!(all.iter().any(|r| r.reset_pm < 10) && all.iter().any(|r| r.reset_pm > 45));
        assert_eq!(Scenario::from_seed(7).rates, Rates::from_seed(7));
    }
}
