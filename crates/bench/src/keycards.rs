//! The keycard-table suite: the bouncer's sans-IO table
//! (`keycard_auth::bouncer::Table`) filled with 1 000 000 live authenticated
//! keycards, in process, on a simulated clock.
//!
//! Measured in one run, for a realistic population (10 000 users, 3
//! methods, IPv4 addresses, one requester per keycard) and for the worst
//! case (1 000 000 distinct users):
//!
//! - bytes per live keycard: what the counting global allocator
//!   ([`counting`]) holds after the fill minus before, over 1M (plus the
//!   peak during the fill and the growth of the process's RSS, which also
//!   counts malloc's own overhead);
//! - ns per `begin` + `authenticate` (the fill: one login per simulated
//!   millisecond, and every 100 simulated ms a `reap(now, 4096)` as the
//!   server's reaper does, timed apart);
//! - ns per `check(id, now)` of random existing ids, against a plain
//!   `HashMap<[u8; 16], u64>` (std's SipHash) of the same ids probed in the
//!   same order, and the same map with the table's own `IdHasher` (so the
//!   hasher and the table's bigger entries can be told apart);
//! - one `revoke_where` by user (a full scan);
//! - reaping everything after its expiry in batches of 4096 (the server's
//!   `REAP_BATCH`; the table's lock is held for one batch), and once in a
//!   single `reap(now, usize::MAX)` (what `begin` does on a full table).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keycard_auth::bouncer::{Filter, IdHasher, KeycardId, Lifetime, Policy, Table};

/// A global allocator that counts the bytes currently allocated (as asked
/// for by the program; malloc's own headers and rounding are not counted).
/// Installed in `main.rs` for the whole binary; one relaxed atomic add per
/// allocation and a relaxed load for the peak, so the other suites barely
/// notice it.
#[allow(unsafe_code)]
pub mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// `std::alloc::System`, counted.
    pub struct Counting;

    fn grew(by: usize) {
        let now = LIVE.fetch_add(by, Relaxed) + by;
        // Racy between threads (a concurrent update may be lost), exact on
        // one thread, which is how the suite uses it.
        if now > PEAK.load(Relaxed) {
            PEAK.store(now, Relaxed);
        }
    }

    fn shrank(by: usize) {
        LIVE.fetch_sub(by, Relaxed);
    }

    // SAFETY: every call is forwarded unchanged to `System`, which upholds
    // the `GlobalAlloc` contract; the counters do not touch the memory.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract is `System.alloc`'s.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as for `alloc`.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator, i.e. from `System`,
            // with `layout`.
            unsafe { System.dealloc(ptr, layout) };
            shrank(layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as for `dealloc`; `new_size` is the caller's promise.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                if new_size >= layout.size() {
                    grew(new_size - layout.size());
                } else {
                    shrank(layout.size() - new_size);
                }
            }
            p
        }
    }

    /// Bytes allocated now.
    pub fn live() -> usize {
        LIVE.load(Relaxed)
    }

    /// Starts a new peak at the current level.
    pub fn reset_peak() {
        PEAK.store(LIVE.load(Relaxed), Relaxed);
    }

    /// The most allocated since the last [`reset_peak`].
    pub fn peak() -> usize {
        PEAK.load(Relaxed)
    }
}

/// Live keycards.
const N: usize = 1_000_000;
/// Distinct users in the realistic population.
const USERS: usize = 10_000;
const METHODS: [&str; 3] = [
    keycard_auth::SCRAM_SHA_256,
    keycard_auth::PASSWORD,
    keycard_auth::OPAQUE,
];
/// The simulated clock starts here (Unix ms, 2027).
const T0: u64 = 1_800_000_000_000;
/// The server's reaper: every 100 ms, at most 4096 keycards per pass
/// (crates/server/src/bouncer.rs, `REAP_EVERY` and `REAP_BATCH`).
const REAP_EVERY_MS: u64 = 100;
const REAP_BATCH: usize = 4096;
/// Timed lookup rounds of N checks each (median reported).
const ROUNDS: usize = 5;

/// A fixed pseudo-random sequence (splitmix64), so both cases and every
/// run see the same population.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn policy() -> Policy {
    Policy {
        max_total: usize::MAX,
        max_per_user: u32::MAX,
        ..Policy::default()
    }
}

/// The process's resident set, from /proc (Linux), in bytes.
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A table after its fill, with what the fill cost.
struct Filled {
    table: Table,
    /// In the order they were issued.
    ids: Vec<KeycardId>,
    /// The clock when the fill ended.
    now: u64,
    /// Allocated after the fill minus before.
    bytes: usize,
    /// The peak during the fill minus before.
    peak: usize,
    /// RSS growth during the fill (malloc's overhead included).
    rss: Option<usize>,
    /// Time in `begin` + `authenticate` only.
    insert: Duration,
    /// Time in the background reaps (expired pending attempts' stale
    /// wheel entries; nothing expires during the fill).
    background_reap: Duration,
}

/// One login per simulated millisecond, keycard `i` for
/// `names[user_of(i)]`; a `reap(now, 4096)` every 100 simulated ms.
fn fill(names: &[String], user_of: impl Fn(usize) -> usize) -> anyhow::Result<Filled> {
    let p = policy();
    let life = Lifetime {
        duration_ms: p.duration_ms,
        max_lifetime_ms: p.max_lifetime_ms,
    };
    let mut ids = Vec::with_capacity(N);
    let rss_before = rss();
    let before = counting::live();
    counting::reset_peak();
    let mut table = Table::new(p);
    let mut insert = Duration::ZERO;
    let mut background_reap = Duration::ZERO;
    let per_tick = REAP_EVERY_MS as usize;
    let mut i = 0;
    while i < N {
        let end = (i + per_tick).min(N);
        let start = Instant::now();
        for j in i..end {
            let now = T0 + j as u64;
            let r = mix(j as u64);
            let user = names[user_of(j)].as_str();
            let method = METHODS[(r % METHODS.len() as u64) as usize];
            let addr = IpAddr::V4(Ipv4Addr::from((r >> 32) as u32));
            let id = table.begin(now, method, user, "", j as u64, Some(addr))?;
            black_box(table.authenticate(id, now, user, "", life, None)?);
            ids.push(id);
        }
        insert += start.elapsed();
        let now = T0 + end as u64;
        let start = Instant::now();
        let gone = table.reap(now, REAP_BATCH);
        background_reap += start.elapsed();
        if !gone.is_empty() {
            bail!("{} keycards expired during the fill", gone.len());
        }
        i = end;
    }
    let bytes = counting::live().saturating_sub(before);
    let peak = counting::peak().saturating_sub(before);
    let rss = rss_before.zip(rss()).map(|(b, a)| a.saturating_sub(b));
    if table.len() != N || table.pending() != 0 {
        bail!(
            "fill left {} keycards, {} pending",
            table.len(),
            table.pending()
        );
    }
    Ok(Filled {
        table,
        ids,
        now: T0 + N as u64,
        bytes,
        peak,
        rss,
        insert,
        background_reap,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per lookup, [independent, dependent] (medians of the rounds).
struct Lookups {
    table: [f64; 2],
    map: [f64; 2],
    idmap: [f64; 2],
}

/// ns per `find` over `probes`, all of which must be found. Independent:
/// the CPU may overlap the cache misses of consecutive lookups (a tight
/// loop of checks). Dependent: each key is made to depend on the previous
/// answer (an XOR with a bit that is always 0 but unknown to the
/// compiler), so every lookup waits for the one before and pays its full
/// latency, as a check between other work does in the server.
fn probe(
    probes: &[KeycardId],
    dependent: bool,
    find: impl Fn(KeycardId) -> Option<u64>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut acc = 0u64;
    let mut last = 0u64;
    let mut missing = 0usize;
    for id in probes {
        let mut key = black_box(*id);
        if dependent {
            // Expiry times are far below 2^63: this XORs 0.
            key.0[0] ^= (last >> 63) as u8;
        }
        match find(key) {
            Some(exp) => {
                last = exp;
                acc = acc.wrapping_add(exp);
            }
            None => missing += 1,
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / probes.len() as f64;
    black_box(acc);
    if missing > 0 {
        bail!("{missing} of {} live ids were not found", probes.len());
    }
    Ok(ns)
}

/// Everything measured on one population.
struct Case {
    bytes: f64,
    peak: f64,
    rss: Option<f64>,
    insert_ns: f64,
    background_reap_us: f64,
    lookups: Lookups,
    map_bytes: f64,
    revoke_ms: f64,
    revoked: usize,
    reap_ns: f64,
    reap_longest_ms: f64,
    reap_median_ms: f64,
    reap_batches: usize,
    after_reap_bytes: f64,
}

fn run_case(
    label: &str,
    names: &[String],
    user_of: impl Fn(usize) -> usize,
) -> anyhow::Result<Case> {
    let before = counting::live();
    let f = fill(names, &user_of)?;
    let Filled {
        mut table,
        ids,
        now,
        ..
    } = f;
    eprintln!(
        "keycards, {label}: filled, {:.0} bytes per keycard",
        f.bytes as f64 / N as f64
    );

    // Lookups: N random existing ids (with repeats), the same sequence for
    // the table and for the plain map, rounds alternating.
    let probes: Vec<KeycardId> = (0..N)
        .map(|k| ids[(mix(k as u64 ^ 0x5eed) % N as u64) as usize])
        .collect();
    let map_before = counting::live();
    let mut map: HashMap<[u8; 16], u64> = HashMap::new();
    for id in &ids {
        let exp = table
            .check(*id, now)
            .context("a fresh keycard does not check")?;
        map.insert(id.0, exp);
    }
    let map_bytes = counting::live().saturating_sub(map_before) as f64 / N as f64;
    let idmap: HashMap<KeycardId, u64, BuildHasherDefault<IdHasher>> =
        map.iter().map(|(k, v)| (KeycardId(*k), *v)).collect();
    // [table, SipHash map, IdHasher map] × [independent, dependent].
    let mut ns: [[Vec<f64>; 2]; 3] = Default::default();
    for _ in 0..ROUNDS {
        for (d, dependent) in [false, true].into_iter().enumerate() {
            ns[0][d].push(probe(&probes, dependent, |id| table.check(id, now).ok())?);
            ns[1][d].push(probe(&probes, dependent, |id| map.get(&id.0).copied())?);
            ns[2][d].push(probe(&probes, dependent, |id| idmap.get(&id).copied())?);
        }
    }
    let [[mut t0, mut t1], [mut m0, mut m1], [mut i0, mut i1]] = ns;
    let lookups = Lookups {
        table: [median(&mut t0), median(&mut t1)],
        map: [median(&mut m0), median(&mut m1)],
        idmap: [median(&mut i0), median(&mut i1)],
    };
    drop(idmap);
    drop(map);
    drop(probes);

    // One admin revocation by user: a scan of all N.
    let filter = Filter {
        user: Some(names[user_of(0)].clone()),
        ..Filter::default()
    };
    let start = Instant::now();
    let gone = table.revoke_where(&filter);
    let revoke_ms = start.elapsed().as_secs_f64() * 1e3;
    let revoked = gone.len();
    drop(gone);
    drop(filter);

    // Everything expires: reap in the server's batches; the lock would be
    // held for one `reap` call (the requesters are told after, so dropping
    // the batch is not timed).
    let after_all = now + policy().duration_ms + 1;
    let mut batches = Vec::new();
    let mut reaped = 0usize;
    loop {
        let start = Instant::now();
        let out = table.reap(after_all, REAP_BATCH);
        batches.push(start.elapsed().as_secs_f64());
        let n = out.len();
        reaped += n;
        drop(out);
        if n < REAP_BATCH {
            break;
        }
    }
    if reaped + revoked != N || !table.is_empty() {
        bail!(
            "reaped {reaped} + revoked {revoked} of {N}; {} left",
            table.len()
        );
    }
    let reap_total: f64 = batches.iter().sum();
    let reap_longest = batches.iter().copied().fold(0.0, f64::max);
    let reap_batches = batches.len();
    let reap_median = median(&mut batches);
    drop(batches);
    drop(ids);
    let after_reap_bytes = counting::live().saturating_sub(before) as f64 / N as f64;
    drop(table);
    // Whatever is left is the bench's own (a few hundred bytes), not the
    // table's.
    let leaked = counting::live() as isize - before as isize;
    eprintln!("keycards, {label}: {leaked} bytes still allocated after dropping the table");

    Ok(Case {
        bytes: f.bytes as f64 / N as f64,
        peak: f.peak as f64 / N as f64,
        rss: f.rss.map(|r| r as f64 / N as f64),
        insert_ns: f.insert.as_nanos() as f64 / N as f64,
        background_reap_us: f.background_reap.as_secs_f64() * 1e6
            / (N as u64 / REAP_EVERY_MS) as f64,
        lookups,
        map_bytes,
        revoke_ms,
        revoked,
        reap_ns: reap_total * 1e9 / reaped.max(1) as f64,
        reap_longest_ms: reap_longest * 1e3,
        reap_median_ms: reap_median * 1e3,
        reap_batches,
        after_reap_bytes,
    })
}

/// Runs the suite and prints its table.
pub fn keycards_suite() -> anyhow::Result<()> {
    // The thread's CSPRNG allocates on first use; not the table's.
    black_box(KeycardId::random());
    let few: Vec<String> = (0..USERS).map(|u| format!("user{u}")).collect();
    let realistic = run_case("10 000 users", &few, |j| {
        (mix(j as u64 ^ 0xabcd) % USERS as u64) as usize
    })?;
    let many: Vec<String> = (0..N).map(|u| format!("user{u}")).collect();
    let worst = run_case("1 000 000 users", &many, |j| j)?;
    drop(many);

    // What `begin` does when the table is full: one unbounded reap.
    let f = fill(&few, |j| (mix(j as u64 ^ 0xabcd) % USERS as u64) as usize)?;
    let mut table = f.table;
    let start = Instant::now();
    let out = table.reap(f.now + policy().duration_ms + 1, usize::MAX);
    let single_ms = start.elapsed().as_secs_f64() * 1e3;
    if out.len() != N {
        bail!("one reap took {} of {N}", out.len());
    }
    drop(out);
    drop(table);

    let both = |name: &str, a: String, b: String| println!("| {name} | {a} | {b} |");
    let f0 = |v: f64| format!("{v:.0}");
    let f1 = |v: f64| format!("{v:.1}");
    let f2 = |v: f64| format!("{v:.2}");
    let rss = |c: &Case| c.rss.map_or("n/a".into(), |r| format!("{r:.0}"));
    let (r, w) = (&realistic, &worst);
    println!("### Keycard table, {N} live authenticated keycards (in process)\n");
    println!("| measurement | {USERS} users, 3 methods | {N} users |");
    println!("|---|---:|---:|");
    both(
        "bytes per keycard (allocated after fill − before)",
        f0(r.bytes),
        f0(w.bytes),
    );
    both(
        "peak during the fill, bytes per keycard",
        f0(r.peak),
        f0(w.peak),
    );
    both("RSS growth per keycard (bytes)", rss(r), rss(w));
    both(
        "begin + authenticate (ns)",
        f0(r.insert_ns),
        f0(w.insert_ns),
    );
    both(
        "background reap(now, 4096) per 100 ms tick during the fill (µs)",
        f1(r.background_reap_us),
        f1(w.background_reap_us),
    );
    for (d, how) in [(0, "independent"), (1, "dependent, latency")].into_iter() {
        both(
            &format!("check(id, now), random live ids, {how} (ns)"),
            f0(r.lookups.table[d]),
            f0(w.lookups.table[d]),
        );
        both(
            &format!("HashMap<[u8;16], u64> (SipHash) get, same ids, {how} (ns)"),
            f0(r.lookups.map[d]),
            f0(w.lookups.map[d]),
        );
        both(
            &format!("HashMap<KeycardId, u64> (IdHasher) get, same ids, {how} (ns)"),
            f0(r.lookups.idmap[d]),
            f0(w.lookups.idmap[d]),
        );
        both(
            &format!("check / SipHash map, check / IdHasher map, {how}"),
            format!(
                "{:.2}×, {:.2}×",
                r.lookups.table[d] / r.lookups.map[d],
                r.lookups.table[d] / r.lookups.idmap[d]
            ),
            format!(
                "{:.2}×, {:.2}×",
                w.lookups.table[d] / w.lookups.map[d],
                w.lookups.table[d] / w.lookups.idmap[d]
            ),
        );
    }
    both(
        "(the SipHash HashMap: bytes per entry)",
        f0(r.map_bytes),
        f0(w.map_bytes),
    );
    both(
        "revoke_where(user) over 1M (ms; keycards revoked)",
        format!("{} ({})", f1(r.revoke_ms), r.revoked),
        format!("{} ({})", f1(w.revoke_ms), w.revoked),
    );
    both(
        "reap all, batches of 4096: ns per keycard",
        f0(r.reap_ns),
        f0(w.reap_ns),
    );
    both(
        "reap all, batches of 4096: longest / median batch (ms)",
        format!("{} / {}", f2(r.reap_longest_ms), f2(r.reap_median_ms)),
        format!("{} / {}", f2(w.reap_longest_ms), f2(w.reap_median_ms)),
    );
    both(
        "reap all: batches",
        r.reap_batches.to_string(),
        w.reap_batches.to_string(),
    );
    both(
        "one reap(now, usize::MAX) over 1M (ms)",
        f0(single_ms),
        "—".into(),
    );
    both(
        "bytes per keycard still held once all are reaped",
        f0(r.after_reap_bytes),
        f0(w.after_reap_bytes),
    );
    Ok(())
}
